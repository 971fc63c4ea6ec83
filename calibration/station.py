"""The station config (edge_infer.station) as calibration sees it: which bundle, which journal,
and any thresholds it pins over the bundle's.

Calibration writes the bundle's thresholds.json; a config that overrides them would hide the
new values, so the overridden keys are rewritten in the config (YAML only; a TOML config is
left alone with a message saying what to change). Mismatches are errors: a config of
another station, or one that runs another bundle.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from edge_infer.bundle import Thresholds
from edge_infer.errors import LinesideError
from edge_infer.station import StationConfig, load_station

KEYS = ("image", "pixel", "min_area")


def station_config(path: str | Path, station: str, bundle: str | Path | None) -> StationConfig:
    """The validated config, refused if it is another station's or runs another bundle."""
    cfg = load_station(path)
    if cfg.station != station:
        raise LinesideError(f"station config {path} is for station {cfg.station!r}, not {station!r}: "
                            f"give that station's config, or pass --station {cfg.station}")
    if bundle is not None and Path(bundle).resolve() != cfg.bundle.resolve():
        raise LinesideError(f"station config {path} runs bundle {cfg.bundle}, not {Path(bundle).resolve()}: "
                            "calibrate the bundle the station runs (or change `bundle:` in its config first)")
    return cfg


def line_config(args, bundle) -> StationConfig | None:
    """The station config whose crop and precision calibration follows: --station-config, else the
    one `lineside bundle` packed into the bundle (a device calibrating what it runs), else none."""
    if args.station_config:
        return station_config(args.station_config, args.station, bundle.root)
    packed = [name for name, e in bundle.manifest.files.items() if e.role == "config" and name.startswith("station.")]
    if packed:
        return station_config(bundle.root / packed[0], args.station, bundle.root)
    return None


def scoring_settings(args, bundle) -> dict:
    """ROI, precision and declared tiles to score with: the line's (station config), so thresholds fit what
    the line scores (tiling itself follows the bundle; a config that disagrees is refused when scoring)."""
    from edge_infer.backends import resolve_precision

    cfg = line_config(args, bundle)
    precision = args.precision or (cfg.precision if cfg else "auto")
    return {"roi": cfg.roi if cfg else None, "tiles": cfg.tiles if cfg else None,
            "precision": resolve_precision(bundle, args.backend, precision)[0]}


def update_overrides(path: str | Path, cfg: StationConfig, thresholds: Thresholds) -> str:
    """Rewrite the threshold keys the config pins; returns what was done, for the user."""
    pinned = [k for k in KEYS if getattr(cfg.thresholds, k) is not None]
    if not pinned:
        return f"station config {path} takes the bundle's thresholds: nothing to change there"
    new = {k: getattr(thresholds, k) for k in pinned}
    path = Path(path)
    if (cfg.bundle / "signature.ed25519").is_file() and path.resolve().parent == cfg.bundle.resolve():
        return (f"station config {path} pins {', '.join(pinned)} over the bundle's thresholds, so the calibrated "
                f"{new} do not apply; it is signed content of the bundle, never rewritten on the device: remove the "
                "pin from the station config on the host, then `lineside bundle` and `lineside flash`")
    if path.suffix.lower() == ".toml":
        return (f"station config {path} pins {', '.join(pinned)} over the bundle's thresholds; edit its "
                f"[thresholds] to {new} or remove them (calibrate does not rewrite TOML)")
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["thresholds"].update(new)
    try:
        StationConfig.model_validate(raw)  # never write a config serve would refuse
    except ValidationError as exc:
        raise LinesideError(f"the new thresholds would make {path} invalid ({exc.errors()[0]['msg']}): "
                            f"set {new} in it by hand") from None
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(path)
    return (f"station config {path}: rewrote its pinned {', '.join(pinned)} to {new} "
            "(its comments were not kept); `lineside ctl ... reload` or restart serve to apply")
