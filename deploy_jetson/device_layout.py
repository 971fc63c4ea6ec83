"""The device root's layout and the steps that only read or re-point it (no bundle code, no heavy imports).

Layout under the device root::

    station              the station this device serves (one line, written at provisioning)
    trusted-keys/*.pub   public keys whose signatures this device accepts
    incoming/            bundle tars being copied (NAME.part while incomplete)
    bundles/<id>/        unpacked, verified bundles, one folder per bundle id
    current -> bundles/<id>    what the service runs (replaced atomically)
    previous -> bundles/<id>   what `lineside rollback` returns to
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_infer.errors import LinesideError

MANIFEST = "manifest.json"


def read_station(root: Path) -> str | None:
    path = root / "station"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def link_info(root: Path, name: str) -> dict | None:
    link = root / name
    if not link.is_symlink():
        return None
    target = root / os.readlink(link)
    info = {"id": target.name, "version": None, "station": None, "present": target.is_dir()}
    try:
        m = json.loads((target / MANIFEST).read_text())
        info.update(version=m["model"]["version"], station=m.get("station"))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged or missing target is reported as such by "present"/"version"
    return info


def state(root: Path) -> dict:
    keys = sorted(p.name for p in (root / "trusted-keys").glob("*.pub"))
    bundles = sorted(p.name for p in (root / "bundles").glob("*") if p.is_dir() and not p.name.startswith("."))
    return {"root": str(root), "station": read_station(root), "current": link_info(root, "current"),
            "previous": link_info(root, "previous"), "trusted_keys": keys, "bundles": bundles}


def set_link(root: Path, name: str, bundle: str | None) -> None:
    """Point ROOT/name at bundles/<bundle> atomically (a new link renamed over the old), or remove it."""
    link = root / name
    if bundle is None:
        if link.is_symlink():
            link.unlink()
        return
    tmp = root / f".{name}.{os.getpid()}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(f"bundles/{bundle}", tmp)
    os.replace(tmp, link)


def switch(root: Path, ident: str) -> dict:
    """Make bundles/<ident> current; the one it replaces becomes previous."""
    old = link_info(root, "current")
    if old and old["id"] != ident:
        set_link(root, "previous", old["id"])
    set_link(root, "current", ident)
    return {"old": old and old["id"], "new": ident}


def restore(root: Path, current: str | None, previous: str | None) -> dict:
    """Put both links back exactly as they were before a failed switch (None: no link)."""
    set_link(root, "current", current)
    set_link(root, "previous", previous)
    return state(root)


def rollback(root: Path) -> dict:
    """Swap current and previous: the service returns to the bundle it ran before."""
    cur, prev = link_info(root, "current"), link_info(root, "previous")
    if not prev or not prev["present"]:
        raise LinesideError(f"{root} has no previous bundle to roll back to")
    set_link(root, "current", prev["id"])
    set_link(root, "previous", cur and cur["id"])
    return {"old": cur and cur["id"], "new": prev["id"]}


def provision(root: Path, station: str | None, key_name: str | None, key_pem: bytes) -> dict:
    from edge_infer.signing import load_public_key

    for sub in ("trusted-keys", "incoming", "bundles"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if station:
        (root / "station").write_text(station + "\n")
    if key_name:
        dest = root / "trusted-keys" / f"{key_name}.pub"
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(key_pem)
        load_public_key(tmp)  # refuses anything that is not an Ed25519 public key
        os.replace(tmp, dest)
    return state(root)
