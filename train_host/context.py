"""What a family's ``fit`` gets: the split, the input spec, options, loaders and a logger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge_infer.preprocess import InputSpec

from .data import Split, make_loader


@dataclass
class TrainContext:
    split: Split
    spec: InputSpec
    options: dict = field(default_factory=dict)  # batch_size, epochs, max_minutes, seed, ...
    log: Callable[[str], None] = print
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable images, by path

    def loader(self, samples, shuffle: bool = False, batch_size: int | None = None, progress: str = ""):
        """Batches of {image, label, mask, index}; unreadable images are skipped and recorded."""
        loader = make_loader(samples, self.spec, batch_size=batch_size or self.options.get("batch_size", 16),
                             shuffle=shuffle, seed=self.options.get("seed", 0))
        for batch in progress_bar(loader, progress):
            yield batch
        self.skipped.extend(s for s in loader.skipped if s not in self.skipped)


def progress_bar(iterable, desc: str):
    if not desc:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
