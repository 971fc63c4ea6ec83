"""The detector families `lineside train` knows, by name → module (imported on use).

A family module provides ``FAMILY``, ``build(config: dict, spec) -> nn.Module`` (the module's
forward takes uint8 N×C×H×W and returns (anomaly_map N×1×H×W, score N)), and
``fit(model, context: TrainContext) -> dict`` (what training did, for the run record).
"""

from __future__ import annotations

import importlib

from edge_infer.errors import LinesideError

FAMILIES = {
    "rx": "train_host.models.rx",
    "rx-mix": "train_host.models.rx_mixture",
    "adtr": "train_host.models.adtr",
    "rddpm": "train_host.models.rddpm",
    "cutpaste": "train_host.models.cutpaste",
    "draem": "train_host.models.draem",
    "dinov2-lora": "train_host.models.dinov2_lora",
    "dinov2-knn": "train_host.models.dinov2_knn",
}


def load_family(name: str):
    if name not in FAMILIES:
        raise LinesideError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])
