"""Helpers for the runtime tests: a station on ipc sockets in a short temp folder, a real
server in this process or a subprocess, and ways to wait for the journal."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from tiny_bundle import gray, make_tiny_bundle

from edge_infer import imaging
from edge_infer.journal import read_verdicts
from edge_infer.station import StationConfig, load_station

__all__ = ["gray", "make_tiny_bundle", "station", "wait_for_rows", "bright", "dark", "corrupt_png", "without_opencv"]


def short_dir() -> Path:
    """ipc:// paths must stay under ~100 characters; pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))


def station(tmp_path: Path, bundle: Path | None = None, name: str = "st1", **settings) -> tuple[StationConfig, Path]:
    """Write a station config (YAML) using ipc sockets; return the loaded config and its path."""
    sock = short_dir()
    data = {
        "station": name,
        "bundle": str(bundle or make_tiny_bundle(tmp_path / "bundle")),
        "sockets": {"frames": f"ipc://{sock}/frames", "verdicts": f"ipc://{sock}/verdicts",
                    "control": f"ipc://{sock}/control"},
        "journal": {"path": str(tmp_path / "journal.sqlite")},
        **settings,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_station(path), path


def cleanup(cfg: StationConfig) -> None:
    """Remove the socket folder that ``station`` made (and nothing else: tcp configs have none)."""
    for address in cfg.sockets.model_dump().values():
        folder = Path(address[len("ipc://"):]).parent if address.startswith("ipc://") else None
        if folder is not None and folder.parent == Path("/tmp") and folder.name.startswith("ls-"):
            shutil.rmtree(folder, ignore_errors=True)


def wait_for_rows(journal: Path, n: int, timeout_s: float = 20.0, **filters) -> list[dict]:
    """Poll the journal until it holds at least n verdicts (or the timeout: then return what it has)."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if journal.exists():
            rows = read_verdicts(journal, **filters)
            if len(rows) >= n:
                return rows
        time.sleep(0.05)
    return rows


def bright(size=(40, 48)) -> np.ndarray:
    return gray(250, size)  # tiny bundle: score 250/255 > 0.5 → NG


def dark(size=(40, 48)) -> np.ndarray:
    return gray(20, size)  # score 20/255 → OK


def corrupt_png(image: np.ndarray) -> bytes:
    """A PNG whose signature and IHDR are intact (it passes the wire checks) but whose pixel
    data is garbage: only decoding finds out, and libpng complains on stderr as it does."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    data = bytearray(buf.tobytes())
    start = data.find(b"IDAT") + 8
    for i in range(start, min(len(data) - 16, start + 32)):
        data[i] ^= 0x5A
    return bytes(data)


@contextlib.contextmanager
def without_opencv():
    """`import cv2` fails inside (as on a device without it); OpenCV is back afterwards."""
    saved = sys.modules.get("cv2")
    sys.modules["cv2"] = None  # the import system's own way to say "not installed"
    imaging.opencv.cache_clear()
    try:
        assert imaging.opencv() is None
        yield
    finally:
        sys.modules["cv2"] = saved
        imaging.opencv.cache_clear()
