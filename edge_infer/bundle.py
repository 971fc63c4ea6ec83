"""The bundle: everything a device needs for one detector at a station.

A directory holding ``manifest.json``, the model graphs (``model.onnx`` and its FP16 /
INT8 variants), ``thresholds.json`` and, once deploy_jetson signs it, a signature. The
manifest lists the sha256 of every file and how each was produced; ``Bundle.load``
refuses a bundle whose files do not match it.

Two folders of a bundle are not part of its content, and a signature never covers them
(docs/architecture.md, "Signed content and device data"):

- ``engines/``: derived data, the TensorRT engines (and ONNX Runtime's TensorRT cache)
  the device builds from the signed ONNX graphs; each engine's sidecar ties it to the
  sha256 of the graph it was built from.
- ``local/``: station data the device writes, i.e. ``local/thresholds.json`` from
  `lineside calibrate` run on a signed bundle. A signed manifest cannot be rewritten
  without the signing key, so on-device recalibration goes there, with its provenance
  (the model sha256 it was calibrated for, the journal, who ran it), and takes precedence
  over the signed ``thresholds.json`` as the bundle's thresholds.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .digest import sha256_file
from .errors import LinesideError
from .preprocess import InputSpec
from .tiling import Tiling

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
THRESHOLDS = "thresholds.json"
SIGNATURE = "signature.ed25519"  # written by edge_infer.signing
ENGINES_DIR = "engines"  # derived data: rebuilt from the signed graphs, never signed
LOCAL_DIR = "local"  # station data written on the device, never signed
LOCAL_THRESHOLDS = f"{LOCAL_DIR}/{THRESHOLDS}"
UNSIGNED_DIRS = (ENGINES_DIR, LOCAL_DIR)
Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelInfo(_Strict):
    family: str
    name: str
    version: str
    config: dict = Field(default_factory=dict)
    training: dict = Field(default_factory=dict, description="data, images used, weights used, metrics")


class TilesInfo(_Strict):
    size: int = Field(description="tile size in source pixels; each tile becomes one model input")
    overlap: int = Field(0, description="least overlap of neighbouring tiles, in source pixels")


class InputInfo(_Strict):
    name: str = "image"
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # NHWC: a native graph (frames in their own BGR layout)
    height: int
    width: int
    channels: Literal[1, 3]
    roi: list[int] | None = None
    max_batch: int = 8
    native: list[int] | None = Field(None, description="a graph that resizes itself: it takes frames of this "
                                     "[height, width] (lineside export --input native)")
    tiles: TilesInfo | None = Field(None, description="the ROI is cut into tiles the graph scores as one batch "
                                    "(edge_infer/tiling.py); serve and calibrate follow it")

    def spec(self) -> InputSpec:
        return InputSpec(self.height, self.width, self.channels, tuple(self.roi) if self.roi else None,
                         tuple(self.native) if self.native else None,
                         Tiling(self.tiles.size, self.tiles.overlap) if self.tiles else None)


class OutputInfo(_Strict):
    anomaly_map: str = "anomaly_map"
    score: str = "score"
    map_height: int
    map_width: int


class FileEntry(_Strict):
    sha256: str
    role: Literal["model", "thresholds", "config", "engine", "other"]
    precision: Precision | None = None
    produced_by: str = ""
    checks: dict = Field(default_factory=dict, description="parity and accuracy checks of this file")


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    lineside_version: str = ""
    station: str | None = None
    model: ModelInfo
    input: InputInfo
    outputs: OutputInfo
    preprocessing: dict = Field(
        default_factory=lambda: {"function": "edge_infer.preprocess.preprocess", "resize": "area-or-linear",
                                 "color": "RGB when 3 channels", "normalisation": "inside the graph"}
    )
    score_normalization: dict = Field(default_factory=lambda: {"method": "none"})
    variants: dict[str, str] = Field(default_factory=dict, description="precision -> ONNX file name")
    files: dict[str, FileEntry] = Field(default_factory=dict)


class Thresholds(_Strict):
    """The station's decision rule: raw scores above ``image`` are NG."""

    image: float | None = None
    pixel: float | None = None
    min_area: int = Field(0, description="smallest defect region, in anomaly-map pixels")
    provenance: dict = Field(default_factory=dict)


def _read_thresholds(path: Path) -> Thresholds:
    try:
        return Thresholds.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise LinesideError(f"{path} is not a valid thresholds file:\n{exc}") from None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write then rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


class Bundle:
    """A bundle directory with a validated manifest whose files match their hashes."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bundle":
        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise LinesideError(
                f"{root} is not a bundle: no {MANIFEST} in it. Make one with `lineside export RUN --out {root}`"
            )
        try:
            manifest = Manifest.model_validate_json((root / MANIFEST).read_text())
        except ValidationError as exc:
            raise LinesideError(f"{root / MANIFEST} is not a valid manifest:\n{exc}") from None
        if manifest.schema_version > SCHEMA_VERSION:
            raise LinesideError(
                f"bundle schema {manifest.schema_version} is newer than this runtime understands "
                f"({SCHEMA_VERSION}): upgrade lineside on this device"
            )
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every file the manifest lists against its sha256."""
        for name, entry in self.manifest.files.items():
            path = self.root / name
            if not path.is_file():
                raise LinesideError(f"bundle {self.root} lacks {name}, which its manifest lists: re-export or re-copy it")
            if sha256_file(path) != entry.sha256:
                raise LinesideError(
                    f"bundle file {path} does not match the sha256 in its manifest: the bundle was altered or "
                    "damaged in transfer; copy it again from a trusted source"
                )

    @property
    def input_spec(self) -> InputSpec:
        return self.manifest.input.spec()

    def model_path(self, precision: str = "fp32") -> Path:
        if precision not in self.manifest.variants:
            have = ", ".join(sorted(self.manifest.variants)) or "none"
            raise LinesideError(
                f"bundle {self.root} has no {precision} model (it has: {have}); "
                f"export one with `lineside export RUN --precision {precision}`"
            )
        return self.root / self.manifest.variants[precision]

    @property
    def signed(self) -> bool:
        return (self.root / SIGNATURE).is_file()

    @property
    def thresholds(self) -> Thresholds:
        """The bundle's thresholds: the device's own calibration (local/) if any, else the signed file."""
        return self.thresholds_with_source()[0]

    def thresholds_with_source(self) -> tuple[Thresholds, str]:
        local = self.root / LOCAL_THRESHOLDS
        if local.is_file():
            thresholds = _read_thresholds(local)
            self._check_local_thresholds(local, thresholds)
            return thresholds, LOCAL_THRESHOLDS
        path = self.root / THRESHOLDS
        return (_read_thresholds(path) if path.is_file() else Thresholds()), THRESHOLDS

    def _check_local_thresholds(self, path: Path, thresholds: Thresholds) -> None:
        # Local thresholds are the device's own data: accepted only for a model this bundle signs.
        made_for = thresholds.provenance.get("model_sha256")
        models = {e.sha256 for e in self.manifest.files.values() if e.role == "model"}
        if made_for not in models:
            raise LinesideError(f"{path} was calibrated for model sha256 {made_for}, which is not one of this "
                                f"bundle's models: recalibrate (`lineside calibrate {self.root} ...`) or delete it")

    def model_sha256(self, precision: str) -> str:
        """The signed sha256 of the graph for ``precision``: what an engine built from it is tied to."""
        return self.manifest.files[self.model_path(precision).name].sha256

    def add_file(self, name: str, role: str, produced_by: str, precision: str | None = None,
                 checks: dict | None = None) -> None:
        """Record a file already written into the bundle directory, with its hash."""
        self.manifest.files[name] = FileEntry(
            sha256=sha256_file(self.root / name), role=role, precision=precision,
            produced_by=produced_by, checks=checks or {},
        )
        if role == "model" and precision:
            self.manifest.variants[precision] = name

    def write_thresholds(self, thresholds: Thresholds, produced_by: str) -> Path:
        """Write the thresholds where they belong; returns the file written.

        An unsigned bundle (on the host, before `lineside bundle`) takes them into its content
        and manifest. A signed one keeps its signed content: they go to local/thresholds.json.
        """
        if self.signed:
            path = self.root / LOCAL_THRESHOLDS
            path.parent.mkdir(exist_ok=True)
            doc = thresholds.model_dump()
            doc["provenance"] = {**doc["provenance"], "produced_by": produced_by}
            write_json_atomic(path, doc)
            return path
        write_json_atomic(self.root / THRESHOLDS, thresholds.model_dump())
        self.add_file(THRESHOLDS, "thresholds", produced_by)
        self.save()
        return self.root / THRESHOLDS

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST, self.manifest.model_dump())
