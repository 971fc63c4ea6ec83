"""What a family's ``fit`` gets: the split, the input spec, options, loaders, the hardware and a logger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge_infer.preprocess import InputSpec

from .data import Split, make_loader
from .device import Hardware, default_workers


def cpu_hardware() -> Hardware:
    import torch

    return Hardware(torch.device("cpu"))


@dataclass
class TrainContext:
    split: Split
    spec: InputSpec
    options: dict = field(default_factory=dict)  # batch_size, epochs, max_minutes, seed, ...
    log: Callable[[str], None] = print
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable images, by path
    hardware: Hardware = field(default_factory=cpu_hardware)
    _memory: dict = field(default_factory=dict)  # decoded images of passes that repeat, by sample paths

    @property
    def device(self):
        return self.hardware.device

    def loader(self, samples, shuffle: bool = False, batch_size: int | None = None, progress: str = "",
               shard: bool = False, keep: bool = False, on_device: bool = True):
        """Batches of {image, label, mask, index} on the device; unreadable images are skipped and recorded.

        ``shard``: under torchrun, only this rank's contiguous share of ``samples`` (closed-form
        families combine the shares). ``keep``: the decoded images are kept in memory after the
        first pass, so a family that walks the same images every epoch decodes them once.
        ``on_device=False``: batches stay on the CPU (for CPU-side work such as synthesis)."""
        from .distributed import shard_range

        hw = self.hardware
        if shard and hw.world_size > 1:
            samples = samples[shard_range(len(samples), hw.rank, hw.world_size)]
        key = tuple(str(s.path) for s in samples) if keep else None
        workers = hw.workers if hw.workers is not None else default_workers(hw.device, len(samples))
        loader = make_loader(samples, self.spec, batch_size=batch_size or self.options.get("batch_size", 16),
                             shuffle=shuffle, seed=self.options.get("seed", 0),
                             workers=0 if key in self._memory else workers, pin_memory=hw.pin_memory,
                             memory=self._memory.setdefault(key, {}) if keep else None)
        target = hw.device if on_device else None
        for batch in progress_bar(loader, progress):
            yield {k: (v.to(target, non_blocking=True) if target and k != "index" and hasattr(v, "to") else v)
                   for k, v in batch.items()}
        self.skipped.extend(s for s in loader.skipped if s not in self.skipped)

    def autocast(self):
        return self.hardware.autocast()

    def wrap(self, module):
        """DistributedDataParallel under torchrun, the module itself otherwise."""
        from .distributed import wrap

        return wrap(module, self.device)

    def local(self, tensor):
        """This rank's slice of a global batch (all of it in one process)."""
        from .distributed import local_part

        hw = self.hardware
        return local_part(tensor, hw.rank, hw.world_size) if hw.world_size > 1 else tensor

    def global_mean(self, value: float) -> float:
        """The mean over ranks of a per-rank mean (a slice's loss → the global batch's); ``value`` in one process."""
        from .distributed import sum_values

        hw = self.hardware
        if hw.world_size == 1:
            return value
        return sum_values([value], self.device if self.device.type == "cuda" else None)[0] / hw.world_size

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        from .distributed import sum_values

        return sum_values(values, self.device if self.device.type == "cuda" else None)

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank (wall-clock decisions); ``value`` itself in one process."""
        from .distributed import agree

        return agree(value, self.device if self.device.type == "cuda" else None)


def progress_bar(iterable, desc: str):
    if not desc:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
