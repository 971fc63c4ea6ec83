"""A station's groups of images (product variant, supplier, lighting state): ``--groups CSV`` rows ``image,group``.

An image is named by its file name, or by the end of its path (``test/good/000.png``) where file names repeat,
as they do across an MVTec folder's parts. rx-mix fits one cluster per group; evaluate reports each group's
AUROC, which tells a station whose groups score at different levels (docs/data.md).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from edge_infer.errors import LinesideError

FORMAT = "a CSV of 'image,group' rows (the image's file name, or its path's end where names repeat)"


def read_table(path: str | Path) -> dict[str, str]:
    """The CSV's rows as {image key: group}."""
    file = Path(path)
    if not file.is_file():
        raise LinesideError(f"--groups {path}: no such file; give {FORMAT}, e.g. the product variant")
    with file.open(newline="") as handle:
        return {row[0].strip().replace("\\", "/"): row[1].strip()
                for row in csv.reader(handle) if len(row) >= 2 and row[0].strip()}


def groups_of(samples, table: dict[str, str], path: str | Path, what: str = "images") -> list[str]:
    """Each sample's group: the row naming the longest end of its path. Refused when an image has no row, or
    when one row names several of these images by a shared file name (name them by their path's end)."""
    keys = [_row_key(Path(sample.path).parts, table) for sample in samples]
    missing = [Path(sample.path).name for sample, key in zip(samples, keys) if key is None]
    if missing:
        raise LinesideError(f"--groups {path}: {len(missing)} {what} have no group (e.g. {missing[0]}): give every "
                            f"one of them a row; {FORMAT}")
    shared, count = Counter(keys).most_common(1)[0] if keys else ("", 0)
    if count > 1:
        raise LinesideError(f"--groups {path}: the row {shared!r} names {count} of the {what}: name "
                            "each by the end of its path (e.g. test/good/000.png) so that every row names one image")
    return [table[key] for key in keys]


def _row_key(parts: tuple[str, ...], table: dict[str, str]) -> str | None:
    ends = ("/".join(parts[-k:]) for k in range(len(parts), 0, -1))
    return next((end for end in ends if end in table), None)
