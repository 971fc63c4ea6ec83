"""The one rule for a station's thresholds, and which values are plausible.

Each key (``image``, ``pixel``, ``min_area``) takes its value from the first layer that
sets it, in this order:

1. **runtime**: `lineside ctl threshold` (an operator's decision). It lasts until it is
   cleared (`ctl threshold --clear`) or the service stops, and survives `ctl reload`: a
   reload that loads new bundle values under it says so in its answer and in the journal.
2. **station**: the station config's ``thresholds:`` (with a line section, the active
   recipe's ``thresholds:`` over the station's).
3. **bundle**: the bundle's calibrated thresholds: ``local/thresholds.json`` when the device
   recalibrated a signed bundle, else the signed ``thresholds.json``.

``ctl stats`` shows every layer and which one each effective value comes from. A runtime
value outside what the bundle's calibration makes plausible is refused unless forced
(`--force`): see ``plausible``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle import Thresholds
from .errors import LinesideError

KEYS = ("image", "pixel", "min_area")
LAYERS = ("runtime", "station", "bundle")
SPAN = 4.0  # how far above the calibration's scale a threshold may go before it is called implausible


@dataclass
class ThresholdLayers:
    bundle: Thresholds
    bundle_source: str = "thresholds.json"
    station: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)

    def effective(self) -> Thresholds:
        return self.bundle.model_copy(update={**self.station, **self.runtime})

    def sources(self) -> dict[str, str]:
        """Which layer each key's effective value comes from."""
        out = {}
        for key in KEYS:
            if key in self.runtime:
                out[key] = "runtime"
            elif key in self.station:
                out[key] = "station"
            else:
                out[key] = f"bundle ({self.bundle_source})"
        return out

    def describe(self) -> dict:
        return {"effective": self.effective().model_dump(exclude={"provenance"}), "source": self.sources(),
                "layers": {"runtime": dict(self.runtime), "station": dict(self.station),
                           "bundle": self.bundle.model_dump(exclude={"provenance"})},
                "bundle_file": self.bundle_source,
                "rule": "runtime (ctl threshold) over station (config pin) over bundle (calibration)"}

    def shadowed(self) -> dict[str, dict]:
        """Runtime values that hide a different value of a lower layer (reported on reload)."""
        below = self.bundle.model_copy(update=self.station)
        return {k: {"runtime": v, "below": getattr(below, k)} for k, v in self.runtime.items()
                if getattr(below, k) != v}


def plausible_range(key: str, bundle: Thresholds) -> tuple[float | None, float | None, str]:
    """The interval a runtime ``key`` must lie in, from the bundle's calibration, and where it comes from.

    image: not below the median good score of the calibration (that would reject half the good
    parts), not above SPAN x the larger of the largest good score and the calibrated threshold
    (that would pass nearly every defect). Without calibration scores, the bundle's threshold
    sets the scale: from 1/SPAN to SPAN times it. pixel: the same scale from the bundle's pixel
    threshold. A layer with nothing to go by only requires a number >= 0.
    """
    if key == "min_area":
        return 0, None, "min_area counts map pixels"
    calibrated = getattr(bundle, key)
    quantiles = bundle.provenance.get("good_quantiles") or {} if key == "image" else {}
    if key == "image" and "p50" in quantiles and "max" in quantiles:
        top = max(float(quantiles["max"]), float(calibrated or 0))
        return float(quantiles["p50"]), SPAN * top, "the calibration's good scores (median .. 4x the largest)"
    if calibrated is not None and calibrated > 0:
        return calibrated / SPAN, calibrated * SPAN, f"the bundle's {key} threshold {calibrated:g} (/4 .. x4)"
    return 0.0, None, "scores are >= 0"


def check_plausible(updates: dict, bundle: Thresholds, force: bool) -> None:
    """Refuse values outside plausible_range unless ``force``; the message gives the range and why."""
    if force:
        return
    for key, value in updates.items():
        low, high, why = plausible_range(key, bundle)
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low:.6g} .. {high:.6g}" if high is not None else f">= {low:.6g}"
            raise LinesideError(f"threshold {key}={value:g} is outside the plausible {span} (from {why}): "
                                "recalibrate (`lineside calibrate`), or pass --force if you mean it")
