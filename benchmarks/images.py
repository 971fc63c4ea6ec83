"""The real images a benchmark replays: ELPV (the default) or a folder, held encoded in
memory so disk reads stay out of the numbers, and handed out in rotation so consecutive
iterations never reuse the same image (caches would flatter the result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.imageio import IMAGE_SUFFIXES, decode_image, list_images

ELPV_LICENCE = "ELPV solar cells: CC BY-NC-SA 4.0, non-commercial use only"


@dataclass
class ImageSet:
    names: list[str]
    payloads: list[bytes]  # encoded (PNG/JPEG) bytes, as a camera would send them
    source: str
    licence: str = ""
    _next: int = field(default=0, repr=False)

    def take(self, n: int) -> list[bytes]:
        """The next n payloads in rotation."""
        out = [self.payloads[(self._next + i) % len(self.payloads)] for i in range(n)]
        self._next = (self._next + n) % len(self.payloads)
        return out

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.payloads), "licence": self.licence,
                "mean_encoded_kib": round(sum(map(len, self.payloads)) / len(self.payloads) / 1024, 1)}


def load_images(folder: str | Path | None = None, limit: int = 256) -> ImageSet:
    """Up to `limit` images spread evenly over the folder (or over ELPV when none is given)."""
    if folder is None:
        paths, source, licence = elpv_paths(), "ELPV (elpv-dataset package)", ELPV_LICENCE
    else:
        folder = Path(folder)
        if not folder.is_dir():
            raise LinesideError(f"--images {folder} is not a folder: give a folder of images "
                                f"({', '.join(IMAGE_SUFFIXES)}) or leave it out to use ELPV")
        paths, source, licence = list_images(folder), str(folder), ""
        if not paths:
            raise LinesideError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if limit < 1:
        raise LinesideError(f"--max-images must be at least 1, got {limit}")
    # Evenly spaced picks keep both ends of a sorted listing (ELPV: mono and poly cells).
    picks = sorted(set(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int)))
    chosen = [paths[i] for i in picks]
    payloads = [p.read_bytes() for p in chosen]
    for path, data in zip(chosen, payloads):
        decode_image(data, str(path))  # an unreadable image fails here, named, not mid-measurement
    return ImageSet([p.name for p in chosen], payloads, source, licence)


def elpv_paths() -> list[Path]:
    # train_host.data.elpv only lists files (numpy, no torch), so this stays torch-free.
    from train_host.data.elpv import elpv_data_dir

    return list_images(elpv_data_dir() / "images")
