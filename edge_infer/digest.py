"""sha256 of a file, read in blocks; standard library only, so the device's small steps
(`deploy_jetson.device_bundles`) can check a copy without importing the bundle code."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
