"""Samples → model-input tensors, through edge_infer's one preprocessing function.

With a tiled spec (``--tiles``) an image is its tiles: an item's image is T×C×H×W (mask
T×1×H×W), the collate concatenates the tiles of a batch's images (so a batch of B images
holds B×T samples, each tile labelled as its image) and ``index`` says, for every tile,
which image it is from; ``canvas`` (B×2, per image in order) is each image's canvas height and
width, from which the tiles' places follow (edge_infer.tiling.boxes), so that maps and scores
are put back together per image as the device does (train_host.infer).

An unreadable image (or mask) never stops a run: the dataset yields None for it, the
collate drops it, and the loader keeps `(path, reason)` in `.skipped` so the caller can
say "skipped N unreadable images: ..." by path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edge_infer.errors import LinesideError
from edge_infer.imageio import read_image
from edge_infer.preprocess import InputSpec, preprocess, read_input, tile_inputs

from .records import Sample


def read_mask(path: str | Path, spec: InputSpec) -> np.ndarray:
    """H×W bool in the model's input geometry: the same ROI crop and resize as the image."""
    return _mask_in_geometry(_read_mask_pixels(path), spec)


class ImageDataset(Dataset):
    """Items: dict(image=uint8 C×H×W, label=int, mask=float32 1×H×W, index=int), or None.
    A tiled spec: image T×C×H×W and mask T×1×H×W, the tiles of the image (see the module docstring)."""

    def __init__(self, samples: list[Sample], spec: InputSpec):
        self.samples = list(samples)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        return self.load(index)[0]

    def load(self, index: int) -> tuple[dict | None, str, str]:
        """(item, path, "") or (None, path, reason): the reason travels back from workers."""
        sample = self.samples[index]
        try:
            pixels, size = read_input(sample.path, self.spec)  # the runtime's decode-and-shrink plan
            mask = np.zeros(pixels.shape[1:], dtype=bool)
            if sample.mask_path is not None:
                raw = _read_mask_pixels(sample.mask_path)
                if raw.shape != size:
                    raise LinesideError(
                        f"mask {sample.mask_path} is {raw.shape[1]}x{raw.shape[0]} but its image is "
                        f"{size[1]}x{size[0]}: masks must match their image's size"
                    )
                mask = _mask_in_geometry(raw, self.spec)
        except LinesideError as exc:  # ImageReadError included: names the file and the problem
            return None, str(sample.path), str(exc)
        mask = mask.astype(np.float32)[None]
        if self.spec.tiles is not None:  # the image's tiles, and its mask cut on the same grid
            canvas = torch.tensor(pixels.shape[1:])
            pixels, mask = tile_inputs(pixels, self.spec)[0], tile_inputs(mask, self.spec)[0]
        item = {"image": torch.from_numpy(pixels), "label": int(sample.label), "mask": torch.from_numpy(mask),
                "index": index}
        if self.spec.tiles is not None:
            item["canvas"] = canvas
        return item, str(sample.path), ""


class SkippingLoader:
    """A DataLoader whose batches leave out unreadable images; `.skipped` lists them.

    `.skipped` is rebuilt on every pass over the loader. A pass where every image failed
    raises LinesideError, since there is nothing to train or evaluate on.
    """

    def __init__(self, loader: DataLoader, dataset: ImageDataset, memory: dict | None = None):
        self.loader = loader
        self.dataset = dataset
        self.memory = memory
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.skipped = []
        loaded = 0
        for batch in self.loader:
            self.skipped.extend(batch.pop("skipped"))
            if batch["image"] is None:
                continue
            loaded += len(batch["index"])
            if self.memory is not None:
                remember(self.memory, batch, tiled=self.dataset.spec.tiles is not None)
            yield batch
        if loaded == 0 and self.skipped:
            path, reason = self.skipped[0]
            raise LinesideError(
                f"all {len(self.skipped)} images were unreadable (first: {path}: {reason}); "
                "check the data folder and the input spec's ROI"
            )

    def report(self) -> str:
        """One line for logs: empty when nothing was skipped."""
        if not self.skipped:
            return ""
        listed = "; ".join(f"{p} ({r})" for p, r in self.skipped[:10])
        more = f"; and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return f"skipped {len(self.skipped)} unreadable images: {listed}{more}"


def make_loader(samples: list[Sample], spec: InputSpec, batch_size: int = 16, shuffle: bool = False,
                seed: int = 0, workers: int = 0, pin_memory: bool = False, memory: dict | None = None) -> SkippingLoader:
    """``workers`` processes decode in parallel (the order of batches does not change); ``pin_memory`` for
    fast copies to a GPU; ``memory`` (a dict kept by the caller) holds decoded items after the first pass,
    so later passes skip decoding and resizing: the same batches, in the same order."""
    dataset = ImageDataset(samples, spec)
    loader = DataLoader(
        _Checked(dataset, memory),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    return SkippingLoader(loader, dataset, memory)


MEMORY_LIMIT_BYTES = 2 << 30  # decoded images kept per loader; past this, the rest are decoded every pass


def remember(memory: dict, batch: dict, tiled: bool = False) -> None:
    """Keep a batch's decoded items by index (masks as bool: they are 0/1), up to MEMORY_LIMIT_BYTES."""
    used = memory.setdefault("_bytes", 0)
    images = list(dict.fromkeys(batch["index"].tolist()))  # each image once, in order (tiles repeat it)
    for j, index in enumerate(batch["index"].tolist()):
        if index in memory or used > MEMORY_LIMIT_BYTES:
            continue
        rows = batch["index"] == index if tiled else j  # a tiled image: all its tiles
        image, mask = batch["image"][rows].clone(), batch["mask"][rows] > 0.5
        extra = {"canvas": batch["canvas"][images.index(index)]} if tiled else {}
        memory[index] = (image, int(batch["label"][j]), mask, extra)
        used += image.numel() + mask.numel()
    memory["_bytes"] = used


def collate(results: list[tuple[dict | None, str, str]]) -> dict:
    """Stack the readable items; carry (path, reason) of the rest under "skipped"."""
    items = [item for item, _, _ in results if item is not None]
    skipped = [(path, reason) for item, path, reason in results if item is None]
    if not items:
        return {"image": None, "label": None, "mask": None, "index": None, "skipped": skipped}
    if items[0]["image"].ndim == 4:  # tiles: every tile is a sample, labelled and indexed as its image
        counts = [len(it["image"]) for it in items]
        return {
            "image": torch.cat([it["image"] for it in items]),
            "label": torch.tensor([it["label"] for it, n in zip(items, counts) for _ in range(n)], dtype=torch.long),
            "mask": torch.cat([it["mask"] for it in items]),
            "index": torch.tensor([it["index"] for it, n in zip(items, counts) for _ in range(n)], dtype=torch.long),
            "canvas": torch.stack([it["canvas"] for it in items]),
            "skipped": skipped,
        }
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "mask": torch.stack([it["mask"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "skipped": skipped,
    }


class _Checked(Dataset):
    """Yields (item, path, reason) so the collate knows which path failed and why."""

    def __init__(self, dataset: ImageDataset, memory: dict | None = None):
        self.dataset = dataset
        self.memory = memory

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.memory is not None and index in self.memory:
            image, label, mask, extra = self.memory[index]
            item = {"image": image, "label": label, "mask": mask.float(), "index": index, **extra}
            return item, str(self.dataset.samples[index].path), ""
        return self.dataset.load(index)


def _read_mask_pixels(path: str | Path) -> np.ndarray:
    """A mask as H×W uint8 with 255 = defect (0/1 masks are scaled up)."""
    mask = read_image(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.max() == 1:
        mask = mask * np.uint8(255)
    return mask


def _mask_in_geometry(mask: np.ndarray, spec: InputSpec) -> np.ndarray:
    # preprocess with one channel: the identical crop and resize the image gets;
    # thresholding after resizing keeps a pixel when most of its source area is defect.
    resized = preprocess(mask, replace(spec, channels=1))[0]
    return resized > 127
