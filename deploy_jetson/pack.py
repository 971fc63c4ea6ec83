"""`lineside bundle`: pack a bundle with its station config into one signed tar.

The tar holds the bundle files flat (manifest.json, the model variants, thresholds.json,
station.yaml, rewritten for the device by `configfile.for_device`) plus ``signature.ed25519``. It is written deterministically (sorted
names, fixed times and owners), so the same inputs give byte-identical tars and a device
can resume a copy by size and check it by sha256.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_infer.bundle import MANIFEST, Bundle, sha256_file
from edge_infer.errors import LinesideError
from edge_infer.signing import SIGNATURE, bundle_id, sign_bundle

from .configfile import PACKED_NAME, for_device, read_config


@dataclass
class Packed:
    path: Path
    id: str
    version: str
    station: str
    key_id: str
    sha256: str
    bytes: int


def find_bundle_dir(source: str | Path) -> Path:
    """A bundle directory, or a run directory holding exactly one exported bundle."""
    src = Path(source)
    if (src / MANIFEST).is_file():
        return src
    if not src.is_dir():
        raise LinesideError(f"{src} does not exist: give a bundle directory (from `lineside export`) or its run")
    found = sorted(p.parent for p in src.glob(f"*/{MANIFEST}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise LinesideError(f"{src} holds no bundle: export one first with `lineside export {src} --out DIR`")
    raise LinesideError(f"{src} holds several bundles ({', '.join(p.name for p in found)}): name the one to pack")


def pack_bundle(source: str | Path, station_config: str | Path, key: str | Path, out: str | Path) -> Packed:
    src = find_bundle_dir(source)
    from edge_infer.station import load_station

    config = read_config(station_config)
    refuse_inline_secrets(config, station_config)
    # the runtime's own validation and messages; secrets are resolved on the device, not here
    station = load_station(station_config, resolve_secrets=False).station
    bundle = Bundle.load(src, verify=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.parent) as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        # Only files the manifest lists travel: stray files in an export folder never reach a device.
        for name in bundle.manifest.files:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, stage / name)
        staged = Bundle(stage, bundle.manifest.model_copy(deep=True))
        for old in [n for n, e in staged.manifest.files.items() if e.role == "config" and n.startswith("station.")]:
            del staged.manifest.files[old]
            (stage / old).unlink()
        (stage / PACKED_NAME).write_text(for_device(config))
        staged.add_file(PACKED_NAME, "config", f"lineside bundle --station {Path(station_config).name}")
        staged.manifest.station = station
        staged.save()
        kid = sign_bundle(stage, key)
        _write_tar(stage, out)
        ident, version = bundle_id(stage), staged.manifest.model.version
    return Packed(out, ident, version, station, kid, sha256_file(out), out.stat().st_size)


def refuse_inline_secrets(config: dict, path: str | Path) -> None:
    """A bundle travels (devices, artifact stores): a secret written into its config would travel too."""
    from edge_infer.secret_refs import inline_secrets

    found = inline_secrets(config)
    if found:
        first = found[0].rsplit(".", 1)[-1]
        raise LinesideError(
            f"{path} holds {'an inline secret' if len(found) == 1 else 'inline secrets'} at {', '.join(found)}: it "
            f"would travel inside the bundle. Reference it instead: `{first}: !secret NAME` with NAME in the "
            f"device's secrets_file, or `{first}: ${{LINESIDE_{first.upper().replace('-', '_')}}}` from the "
            "service's environment (docs/security.md)")


def _write_tar(stage: Path, out: Path) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o644 if info.isfile() else 0o755
        return info

    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        names = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        for name in [MANIFEST, SIGNATURE] + [n for n in names if n not in (MANIFEST, SIGNATURE)]:
            tar.add(stage / name, arcname=name, filter=clean)
    tmp.replace(out)
