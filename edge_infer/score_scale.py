"""The scale a station publishes anomaly scores on, from the manifest's ``score_normalization``.

Each model family scores on its own raw scale (a reconstruction error near 10 on good parts,
a distance near 0.3, ...), so a PLC or a dashboard cannot read a raw score without knowing
the model. Export records the good parts' validation scores in the manifest
(``score_normalization``); where it does, every line channel (Modbus, OPC UA, MQTT, the
operator page) publishes scores — and the threshold beside them — on one scale:

    ``good_quantiles``:  published = (raw - q50) / (q99 - q50)

0 is the median good part, 1 the 99th percentile of good parts; the threshold is mapped the
same way (a calibrated threshold usually lands near 1), so ``score > threshold`` means NG on
either scale. With ``method: none`` (or no usable quantiles) scores stay raw. The journal,
calibration and the decision itself stay on the raw scale: normalising is a monotone map,
applied only where scores leave the device.
"""

from __future__ import annotations

import math

from .errors import LinesideError

RAW, GOOD_QUANTILES = 0, 1  # the code the PLC reads (Modbus SCORE_SCALE, OPC UA ScoreScale)


class ScoreScale:
    def __init__(self, normalization: dict | None):
        spec = dict(normalization or {"method": "none"})
        method = spec.get("method", "none")
        self.offset, self.span = 0.0, 1.0
        if method == "none":
            self.code, self.name = RAW, "raw"
        elif method == "good_quantiles":
            q50, q99 = spec.get("q50"), spec.get("q99")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (q50, q99)) or q99 <= q50:
                raise LinesideError(f"the manifest's score_normalization {spec} needs finite q50 < q99: "
                                    "re-export the bundle with validation images")
            self.code, self.name = GOOD_QUANTILES, "good_quantiles"
            self.offset, self.span = float(q50), float(q99 - q50)
        else:
            raise LinesideError(f"the manifest's score_normalization method {method!r} is unknown: "
                                "this runtime knows 'none' and 'good_quantiles'; update lineside")

    @classmethod
    def of_bundle(cls, bundle) -> ScoreScale:
        return cls(bundle.manifest.score_normalization)

    def __call__(self, raw: float | None) -> float | None:
        if raw is None or not math.isfinite(raw):
            return raw
        return (float(raw) - self.offset) / self.span

    def describe(self) -> dict:
        return {"scale": self.name, "offset": self.offset, "span": self.span}
