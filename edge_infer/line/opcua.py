"""The PLC handshake over OPC UA (asyncua server), shaped after OPC 40100 (Machine Vision):
a VisionSystem object with its SystemState, RecipeManagement and ResultManagement, plus the
same handshake signals and counters as the Modbus map. Node ids are strings in the namespace
``urn:lineside:machine-vision`` (listed in docs/line-integration.md). Variables are read-only
for clients; the PLC acts through methods, and a refused call sets the error code and answers
with a Bad status — the service keeps running. The status is returned, not raised: asyncua
turns a raised exception into BadUnexpectedError, whatever it carried.
"""

from __future__ import annotations

import asyncio
import logging

from asyncua import ua

from ..errors import LinesideError
from . import opcua_security
from .channels import LoopThread
from .plc_signals import COUNTERS, PlcError

NAMESPACE = "urn:lineside:machine-vision"
ROOT = "VisionSystem"
SYNC_S = 0.02


def _counter(name: str):
    return lambda s: s["counters"][name]


# (path under VisionSystem, variant type, value from a signals snapshot)
VARIABLES = [
    ("SystemState", ua.VariantType.String, lambda s: system_state(s)),
    ("Handshake.Ready", ua.VariantType.Boolean, lambda s: s["ready"]),
    ("Handshake.Busy", ua.VariantType.Boolean, lambda s: s["busy"]),
    ("Handshake.Error", ua.VariantType.Boolean, lambda s: s["error"]),
    ("Handshake.ErrorCode", ua.VariantType.UInt16, lambda s: s["error_code"]),
    ("Handshake.ErrorText", ua.VariantType.String, lambda s: s["error_detail"]),
    ("Handshake.LastTriggerId", ua.VariantType.UInt32, lambda s: s["last_trigger_id"]),
    ("RecipeManagement.ActiveRecipeId", ua.VariantType.UInt32, lambda s: s["recipe_id"]),
    ("ResultManagement.ResultValid", ua.VariantType.Boolean, lambda s: s["result_valid"]),
    ("ResultManagement.InspectionId", ua.VariantType.UInt32, lambda s: s["inspection_id"]),
    ("ResultManagement.StatusCode", ua.VariantType.UInt16, lambda s: s["status_code"]),
    ("ResultManagement.IsOk", ua.VariantType.Boolean, lambda s: s["ok"]),
    ("ResultManagement.Reject", ua.VariantType.Boolean, lambda s: s["ng"]),
    ("ResultManagement.Late", ua.VariantType.Boolean, lambda s: s["late"]),
    ("ResultManagement.Score", ua.VariantType.Double, lambda s: float(s["score"])),
    ("ResultManagement.Threshold", ua.VariantType.Double, lambda s: float(s["threshold"])),
    ("ResultManagement.ScoreScale", ua.VariantType.UInt16, lambda s: s["score_scale"]),
    ("ResultManagement.RecipeId", ua.VariantType.UInt32, lambda s: s["result_recipe_id"]),
    ("ResultManagement.Buffered", ua.VariantType.UInt16, lambda s: s["buffered"]),
    ("ResultManagement.Overrun", ua.VariantType.Boolean, lambda s: s["overrun"]),
] + [(f"Counters.{name}", ua.VariantType.UInt32, _counter(name)) for name in COUNTERS]


def system_state(s: dict) -> str:
    """OPC 40100's states, as far as they fit a line-side inspector."""
    if s["error"]:
        return "Error"
    if s["switching"] or not s["ready"]:
        return "Preoperational"
    return "SingleExecution" if s["busy"] else "Ready"


class OpcUaChannel:
    def __init__(self, service, cfg):
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        self.service, self.signals = service, service.signals
        self.loop = LoopThread("line-opcua")
        self.nodes: dict[str, tuple] = {}
        try:
            self.loop.run(self._start(cfg))
        except LinesideError:
            self.loop.stop()
            raise
        except Exception as exc:  # noqa: BLE001 (any start failure is reported as the endpoint's)
            self.loop.stop()
            raise LinesideError(f"cannot serve OPC UA at {cfg.endpoint}: {exc}; pick a free port in "
                                "line.opcua.endpoint") from None

    async def _start(self, cfg) -> None:
        server = opcua_security.make_server(cfg.security, self.service.server.cfg.security)
        await server.init()
        server.set_endpoint(cfg.endpoint)
        await opcua_security.apply(server, cfg.security, self.service.journal.event)  # certificates, users, roles
        server.set_server_name(f"lineside {self.service.station}")
        idx = await server.register_namespace(NAMESPACE)
        root = await server.nodes.objects.add_object(ua.NodeId(ROOT, idx), ua.QualifiedName(ROOT, idx))
        folders = {}
        for path, vtype, read in VARIABLES:
            *parents, name = path.split(".")
            parent = root
            for depth in range(len(parents)):
                key = ".".join(parents[:depth + 1])
                if key not in folders:
                    folders[key] = await parent.add_object(ua.NodeId(f"{ROOT}.{key}", idx),
                                                           ua.QualifiedName(parents[depth], idx))
                parent = folders[key]
            node = await parent.add_variable(ua.NodeId(f"{ROOT}.{path}", idx), ua.QualifiedName(name, idx),
                                             ua.Variant(read(self.signals.snapshot()), vtype))
            self.nodes[path] = (node, vtype, read, None)
        recipes = folders["RecipeManagement"]
        await recipes.add_variable(ua.NodeId(f"{ROOT}.RecipeManagement.Recipes", idx),
                                   ua.QualifiedName("Recipes", idx),
                                   [f"{r.id}:{r.name}" for r in self.service.cfg.recipes])
        u32 = ua.NodeId(ua.ObjectIds.UInt32)
        arg = ua.Argument(Name="RecipeId", DataType=u32, ValueRank=-1)
        out = ua.Argument(Name="InspectionId", DataType=u32, ValueRank=-1)
        await root.add_method(ua.NodeId(f"{ROOT}.StartSingleJob", idx), ua.QualifiedName("StartSingleJob", idx),
                              self._start_single_job, [], [out])
        await recipes.add_method(ua.NodeId(f"{ROOT}.RecipeManagement.ActivateRecipe", idx),
                                 ua.QualifiedName("ActivateRecipe", idx), self._activate_recipe, [arg], [])
        await folders["ResultManagement"].add_method(
            ua.NodeId(f"{ROOT}.ResultManagement.AcknowledgeResult", idx),
            ua.QualifiedName("AcknowledgeResult", idx), self._acknowledge, [], [])
        query = ua.Argument(Name="InspectionId", DataType=u32, ValueRank=-1)
        outputs = [ua.Argument(Name=name, DataType=ua.NodeId(dtype), ValueRank=-1) for name, dtype in (
            ("StatusCode", ua.ObjectIds.UInt16), ("Score", ua.ObjectIds.Double), ("Threshold", ua.ObjectIds.Double),
            ("RecipeId", ua.ObjectIds.UInt32), ("Late", ua.ObjectIds.Boolean))]
        await folders["ResultManagement"].add_method(
            ua.NodeId(f"{ROOT}.ResultManagement.GetResult", idx), ua.QualifiedName("GetResult", idx),
            self._get_result, [query], outputs)
        await root.add_method(ua.NodeId(f"{ROOT}.ResetError", idx), ua.QualifiedName("ResetError", idx),
                              self._reset_error, [], [])
        await server.start()
        self.server = server
        self.sync_task = asyncio.ensure_future(self._sync())

    async def _sync(self) -> None:
        """Copy the signal model to the nodes (only values that changed) every SYNC_S."""
        last: dict[str, object] = {}
        while True:
            snap = self.signals.snapshot()
            for path, (node, vtype, read, _) in self.nodes.items():
                value = read(snap)
                if last.get(path, object()) != value:
                    await node.write_value(ua.Variant(value, vtype))
                    last[path] = value
            await asyncio.sleep(SYNC_S)

    # ---- methods (run on the server's loop; every one is quick) ---------------------------
    async def _start_single_job(self, parent):
        inspection = self.service.trigger("network", opcua_security.caller(), plc=True)
        if inspection is None:  # refused: its part is answered DROPPED under Handshake.LastTriggerId
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        return [ua.Variant(inspection, ua.VariantType.UInt32)]

    async def _activate_recipe(self, parent, recipe_id):
        value = recipe_id.Value if isinstance(recipe_id, ua.Variant) else recipe_id
        try:
            self.service.select_recipe(int(value), opcua_security.caller())
        except (PlcError, TypeError, ValueError):
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        return []

    async def _get_result(self, parent, inspection_id):
        value = inspection_id.Value if isinstance(inspection_id, ua.Variant) else inspection_id
        result = self.signals.result(int(value)) if isinstance(value, int) else None
        if result is None:  # not decided yet, or too old to be kept
            return ua.StatusCode(ua.StatusCodes.BadNoData)
        return [ua.Variant(result.status_code, ua.VariantType.UInt16),
                ua.Variant(float(result.score or 0.0), ua.VariantType.Double),
                ua.Variant(float(result.threshold or 0.0), ua.VariantType.Double),
                ua.Variant(result.recipe_id, ua.VariantType.UInt32), ua.Variant(result.late, ua.VariantType.Boolean)]

    async def _acknowledge(self, parent):
        self.signals.acknowledge()
        return []

    async def _reset_error(self, parent):
        self.service.acknowledge_alarm(opcua_security.caller())
        return []

    def close(self) -> None:
        async def stop():
            self.sync_task.cancel()
            await self.server.stop()

        try:
            self.loop.run(stop(), timeout_s=10)
        finally:
            self.loop.stop()
