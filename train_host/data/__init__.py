"""Datasets: MVTec AD / AD 2 folders and ELPV as `Split`s of samples, and torch loaders.

`load_split` and the records are torch-free; the loader names (`ImageDataset`,
`make_loader`, `read_mask`) import torch on first use. See docs/data.md.
"""

from .records import Sample, Split
from .split import load_split

_LOADER_NAMES = ("ImageDataset", "SkippingLoader", "make_loader", "read_mask")

__all__ = ["Sample", "Split", "load_split", *_LOADER_NAMES]


def __getattr__(name: str):
    if name in _LOADER_NAMES:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
