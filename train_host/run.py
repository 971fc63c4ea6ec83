"""A training run on disk: ``run.json`` (what was trained on what, and how) + safetensors weights."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from edge_infer.bundle import sha256_file, write_json_atomic
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from .families import load_family

RECORD = "run.json"
WEIGHTS = "weights.safetensors"


def save_run(out: Path, family: str, config: dict, spec: InputSpec, model, data_info: dict,
             training: dict) -> Path:
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS))
    from lineside import __version__

    record = {
        "family": family,
        "config": config,
        "input": spec.to_dict(),
        "data": data_info,
        "training": training,
        "weights": WEIGHTS,
        "weights_sha256": sha256_file(out / WEIGHTS),
        "lineside_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / RECORD, record)
    return out


def read_record(run: str | Path) -> dict:
    path = Path(run) / RECORD
    if not path.is_file():
        raise LinesideError(f"{run} is not a training run: no {RECORD}. Make one with `lineside train FAMILY --out {run}`")
    return json.loads(path.read_text())


def load_run(run: str | Path, device=None):
    """(model in eval mode on ``device``, default the CPU; record) from a run directory; weights load with
    safetensors only."""
    from safetensors.torch import load_model

    record = read_record(run)
    spec = InputSpec.from_dict(record["input"])
    model = load_family(record["family"]).build(record["config"], spec)
    weights = Path(run) / record["weights"]
    if sha256_file(weights) != record["weights_sha256"]:
        raise LinesideError(f"{weights} does not match the hash in {RECORD}: the run was altered; train again")
    load_model(model, str(weights))
    if device is not None:
        model.to(device)
    return model.eval(), record


def run_data(record: dict, data: str | None, run: str | Path = "RUN") -> str:
    """The dataset to score a run on: ``data`` if given, else the run's own; a zero-shot run has none."""
    data = data or record["data"].get("data")
    if data:
        return data
    stations = [s.get("name", s.get("data")) for s in record["data"].get("stations", [])]
    if stations:
        raise LinesideError(f"{run} was trained zero-shot on the stations {', '.join(stations)}: give --data DIR, "
                            "the station to score (it needs no training of its own)")
    raise LinesideError(f"{run} does not say which images it was trained on: give --data DIR")


def run_split(record: dict, data: str, limit: int | None = None):
    """``data`` split as the run split its own: the same validation share and seed, and, on the run's own
    data, the same ``val_defects`` and ``contamination`` taken out of test, so neither the defects it validated
    on nor those it trained on are scored as test images."""
    from .data import load_split

    info = record["data"]
    own = data == info.get("data")
    return load_split(data, val_share=info.get("val_share", 0.1), seed=info.get("seed", 0), limit=limit,
                      val_defects=info.get("val_defects", 0) if own else 0,
                      contamination=info.get("contamination", 0.0) if own else 0.0)
