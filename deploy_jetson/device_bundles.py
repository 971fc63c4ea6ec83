"""Bundles in and out of a device: resumable upload, verified install with a smoke run, removal, pruning.

Only `install` needs the bundle and signing code (pydantic, OpenCV, ONNX Runtime: seconds to import on
a Jetson); it imports them itself, so the other steps of a flash stay quick.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edge_infer.digest import sha256_file
from edge_infer.errors import LinesideError

from .device_layout import read_station


def upload_state(root: Path, name: str) -> dict:
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    part = incoming / f"{name}.part"
    return {"complete": (incoming / name).is_file(), "part_bytes": part.stat().st_size if part.is_file() else 0}


def upload_commit(root: Path, name: str, sha256: str) -> dict:
    incoming = root / "incoming"
    done, part = incoming / name, incoming / f"{name}.part"
    path = done if done.is_file() else part
    if not path.is_file():
        raise LinesideError(f"{part} is missing: the copy did not arrive; flash again")
    actual = sha256_file(path)
    if actual != sha256:
        path.unlink()
        raise LinesideError(f"the copied bundle's sha256 is {actual[:12]}…, not {sha256[:12]}…: the partial copy "
                            "was damaged and has been deleted; flash again to copy it afresh")
    os.replace(path, done)
    return {"path": str(done), "sha256": actual}


def upload_join(root: Path, name: str, sha256: str) -> dict:
    """Join the chunks an Ansible copy left in incoming/NAME.chunks/ (in name order), then check as upload-commit.

    Ansible's copy module skips a chunk whose checksum already matches, so a copy cut off
    midway resumes at the first missing chunk on the next run.
    """
    incoming = root / "incoming"
    chunks = incoming / f"{name}.chunks"
    if not (incoming / name).is_file():
        parts = sorted(chunks.glob("chunk.*")) if chunks.is_dir() else []
        if not parts:
            raise LinesideError(f"{chunks} holds no chunks: the copy did not arrive; run the roll-out again")
        tmp = incoming / f"{name}.part"
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    result = upload_commit(root, name, sha256)
    shutil.rmtree(chunks, ignore_errors=True)  # the joined tar passed its sha256 check
    return result


def install(root: Path, tar_name: str, smoke: bool) -> dict:
    """Unpack, verify (signature, hashes, station) and smoke-run a copied bundle into bundles/<id>."""
    from edge_infer.signing import extract_bundle_tar, load_trusted_keys, verify_bundle

    station = read_station(root)
    if station is None:
        raise LinesideError(f"{root}/station is missing: this device does not know its station; set it with "
                            "`lineside provision TARGET --station NAME`")
    tar_path = root / "incoming" / tar_name
    staging = root / "bundles" / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract_bundle_tar(tar_path, staging)
        verified = verify_bundle(staging, load_trusted_keys([root / "trusted-keys"]), station, incoming=True)
        if smoke:
            smoke_run(verified.bundle)
        final = root / "bundles" / verified.id
        if (root / "current").is_symlink() and os.readlink(root / "current") == f"bundles/{verified.id}":
            raise LinesideError(f"bundle {verified.id} is already the current one on this device")
        described = verified.describe()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tar_path.unlink(missing_ok=True)
    return {**described, "path": str(final)}


def smoke_run(bundle) -> None:
    """Load every ONNX variant on ONNX Runtime and score one blank frame: the bundle runs on this device."""
    import numpy as np

    from edge_infer.backends.ort import OrtBackend

    spec, m = bundle.input_spec, bundle.manifest
    for precision in sorted(m.variants):
        try:
            with OrtBackend(bundle.model_path(precision), spec, 1, provider="ort-cpu", threads=1) as backend:
                out = backend.run(np.zeros((1, *spec.graph_shape), np.uint8))
        except LinesideError:
            raise
        except Exception as exc:  # onnxruntime raises its own types for bad graphs
            raise LinesideError(f"the {precision} model of bundle {bundle.root} does not run on this device: "
                                f"{exc}") from None
        if out.score.shape != (1,) or not np.isfinite(out.score).all():
            raise LinesideError(f"the {precision} model of bundle {bundle.root} gave no finite score for a blank "
                                f"frame (score {out.score!r}): re-export it")


def remove(root: Path, ident: str) -> dict:
    links = {os.readlink(root / n) for n in ("current", "previous") if (root / n).is_symlink()}
    if f"bundles/{ident}" in links:
        return {"removed": False}
    shutil.rmtree(root / "bundles" / ident, ignore_errors=True)
    return {"removed": True}


def prune(root: Path, keep: int) -> dict:
    """Delete the oldest bundles beyond `keep`, never the current or previous one."""
    links = {Path(os.readlink(root / n)).name for n in ("current", "previous") if (root / n).is_symlink()}
    olds = sorted((p for p in (root / "bundles").glob("*") if p.is_dir() and not p.name.startswith(".")
                   and p.name not in links), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p.name for p in olds[max(keep - len(links), 0):]]
    for name in removed:
        shutil.rmtree(root / "bundles" / name)
    return {"removed": removed}
