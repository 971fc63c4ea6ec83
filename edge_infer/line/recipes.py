"""Recipes: the part variants a station inspects (bundle, thresholds, ROI, trigger mode).

A switch (from the PLC, OPC UA, `lineside ctl recipe`, or the operator page):

1. checks the id (unknown → UNKNOWN_RECIPE) and the bundle: signed by a trusted key when the
   line has ``trusted_keys`` (edge_infer.signing), else the sha256 of every file
   (``Bundle.load``); a bundle that fails → RECIPE_REJECTED;
2. loads the new model while the old one keeps scoring (preload);
3. holds new triggers (Busy), waits until every part in flight has its verdict, then swaps
   the model under the server's model lock — between parts, never mid-part;
4. journals who, when, from → to.
"""

from __future__ import annotations

import threading
import time

from ..bundle import Bundle
from ..errors import LinesideError
from ..logs import log_event
from ..score_scale import ScoreScale
from .config import Recipe
from .plc_signals import ErrorCode, PlcError

SWITCH_WAIT_S = 30.0  # longest wait for the parts in flight to be decided


def verify_recipe_bundle(recipe: Recipe, trusted_keys, station: str):
    """The recipe's bundle, verified: signature when keys are configured, file hashes always."""
    try:
        from ..signing import load_trusted_bundle

        return load_trusted_bundle(recipe.bundle, trusted_keys, station)
    except LinesideError as exc:
        raise PlcError(ErrorCode.RECIPE_REJECTED, f"recipe {recipe.id} ({recipe.name}): {exc}") from None


class RecipeBook:
    def __init__(self, server, line_cfg, signals, journal, hub):
        self.server, self.cfg, self.signals, self.journal, self.hub = server, line_cfg, signals, journal, hub
        self.recipes = {r.id: r for r in line_cfg.recipes}
        self.active: Recipe | None = None
        self.scales: dict[int, ScoreScale] = {}  # the published score scale of each recipe loaded
        self.lock = threading.Lock()  # one switch at a time

    def get(self, recipe_id) -> Recipe:
        if isinstance(recipe_id, bool) or not isinstance(recipe_id, int) or recipe_id not in self.recipes:
            raise PlcError(ErrorCode.UNKNOWN_RECIPE,
                           f"no recipe {recipe_id!r}; the station has {sorted(self.recipes)}")
        return self.recipes[recipe_id]

    def load_model(self, recipe: Recipe):
        from ..pipeline import Model

        bundle = verify_recipe_bundle(recipe, self.cfg.trusted_keys, self.server.station)
        try:
            scale = ScoreScale.of_bundle(bundle)
        except LinesideError as exc:
            raise PlcError(ErrorCode.RECIPE_REJECTED, f"recipe {recipe.id}: {exc}") from None
        try:  # the recipe's thresholds and ROI over the station's (edge_infer.thresholds' rule)
            return Model(self.server.cfg, recipe=recipe, bundle=bundle), scale
        except LinesideError as exc:
            raise PlcError(ErrorCode.RECIPE_REJECTED, f"recipe {recipe.id}: {exc}") from None

    def use_scale(self, scale: ScoreScale) -> None:
        """The active recipe's bundle was reloaded: publish on its scale."""
        if self.active is not None:
            self.scales[self.active.id] = scale
            self.signals.score_scale = scale.code

    def switch(self, recipe_id, who: str) -> dict:
        """Switch now (blocking until the parts in flight are decided); raises PlcError."""
        recipe = self.get(recipe_id)
        with self.lock:
            before = self.active
            if before is not None and before.id == recipe.id:
                return {"recipe": recipe.id, "name": recipe.name, "changed": False}
            t0 = time.perf_counter()
            model, scale = self.load_model(recipe)  # preload: the old model keeps scoring meanwhile
            self.signals.switching = True
            try:
                if not self.hub.wait_idle(SWITCH_WAIT_S):
                    model.close()
                    raise PlcError(ErrorCode.NOT_READY, f"parts still in flight after {SWITCH_WAIT_S:g} s; "
                                   "switch recipes when the line is clear")
                with self.server.model_lock:
                    old, self.server.model = self.server.model, model
                self.active = recipe
                self.scales[recipe.id] = scale
                self.signals.recipe_id, self.signals.score_scale = recipe.id, scale.code
            finally:
                self.signals.switching = False
            old.close()
        detail = {"from": before.id if before else None, "from_name": before.name if before else None,
                  "to": recipe.id, "to_name": recipe.name, "bundle": model.info["manifest_sha256"],
                  "load_s": round(time.perf_counter() - t0, 3),
                  # runtime thresholds were set on the old part's scale: another part starts without them
                  "runtime_thresholds_dropped": old.layers.runtime}
        self.journal.event("recipe", who, **detail)
        log_event("recipe_switched", station=self.server.station, who=who, **detail)
        return {"recipe": recipe.id, "name": recipe.name, "changed": True}

    def scale(self, recipe_id) -> ScoreScale:
        """The published score scale of a recipe (the manifest's, read once; raw if unreadable)."""
        if recipe_id not in self.scales:
            recipe = self.recipes.get(recipe_id)
            try:
                self.scales[recipe_id] = ScoreScale.of_bundle(Bundle.load(recipe.bundle, verify=False))
            except (LinesideError, AttributeError):  # a recipe since removed, or a broken bundle: say raw
                return ScoreScale(None)
        return self.scales[recipe_id]

    def switch_async(self, recipe_id, who: str, on_error) -> None:
        """Check the id now (a PLC gets its error code at once), switch in the background.

        ``on_error(exc, who, recipe_id)`` hears of a switch refused later (journaled with both)."""
        self.get(recipe_id)

        def run():
            try:
                self.switch(recipe_id, who)
            except PlcError as exc:
                on_error(exc, who, recipe_id)

        threading.Thread(target=run, name="recipe-switch", daemon=True).start()
