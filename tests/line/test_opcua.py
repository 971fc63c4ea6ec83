"""The PLC handshake over OPC UA with a real asyncua client against a real server."""

import asyncio

import pytest

pytest.importorskip("asyncua")
from asyncua import Client, ua
from line_helpers import free_port, gray, line_station, start_line

from edge_infer.journal import read_verdicts
from edge_infer.line.opcua import NAMESPACE
from edge_infer.line.plc_signals import ErrorCode


async def poll(read, predicate, timeout_s=15):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await read()
        if predicate(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.02)


def test_opcua_trigger_result_ack_and_refusals(tmp_path):
    port = free_port()
    frames = iter([gray(250), gray(20)] * 10)
    cfg = line_station(tmp_path, {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/lineside"},
                                  "max_in_flight": 1})
    server, service = start_line(cfg, lambda: next(frames))

    async def plc():
        async with Client(f"opc.tcp://127.0.0.1:{port}/lineside", timeout=5) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            node = lambda path: client.get_node(ua.NodeId(f"VisionSystem.{path}", ns))
            root = client.get_node(ua.NodeId("VisionSystem", ns))
            assert await poll(node("SystemState").read_value, lambda s: s == "Ready") == "Ready"
            inspection = await root.call_method(ua.NodeId("VisionSystem.StartSingleJob", ns))
            valid = await poll(node("ResultManagement.ResultValid").read_value, bool)
            assert valid and inspection == 1
            assert await node("ResultManagement.InspectionId").read_value() == inspection
            assert await node("ResultManagement.StatusCode").read_value() == 2  # NG
            assert await node("ResultManagement.Reject").read_value() is True
            assert await node("ResultManagement.Score").read_value() == pytest.approx(250 / 255, abs=1e-3)
            assert await node("ResultManagement.Threshold").read_value() == pytest.approx(0.5)  # beside the score
            assert await node("ResultManagement.ScoreScale").read_value() == 0
            results = node("ResultManagement")
            await results.call_method(ua.NodeId("VisionSystem.ResultManagement.AcknowledgeResult", ns))
            assert await poll(node("ResultManagement.ResultValid").read_value, lambda v: not v) is False


            recipes = node("RecipeManagement")
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await recipes.call_method(ua.NodeId("VisionSystem.RecipeManagement.ActivateRecipe", ns),
                                          ua.Variant(42, ua.VariantType.UInt32))
            assert refused.value.code == ua.StatusCodes.BadInvalidArgument  # as documented, not BadUnexpectedError
            code = await poll(node("Handshake.ErrorCode").read_value, bool)
            assert code == ErrorCode.UNKNOWN_RECIPE
            assert await poll(node("SystemState").read_value, lambda s: s == "Error") == "Error"
            with pytest.raises(ua.UaError):  # variables are read-only for clients
                await node("Handshake.ErrorCode").write_value(ua.Variant(0, ua.VariantType.UInt16))
            await root.call_method(ua.NodeId("VisionSystem.ResetError", ns))
            assert await poll(node("Handshake.ErrorCode").read_value, lambda v: v == 0) == 0
            other = service.trigger("network", "ctl:alice")  # not the PLC's part: its handshake stays put
            await poll(lambda: asyncio.sleep(0, service.signals.result(other)), bool)
            second = await root.call_method(ua.NodeId("VisionSystem.StartSingleJob", ns))
            assert second == other + 1 == 3
            assert await poll(node("ResultManagement.InspectionId").read_value, lambda v: v == second) == second
            assert await node("Counters.triggers").read_value() == 3
            status, score, threshold, recipe, late = await results.call_method(
                ua.NodeId("VisionSystem.ResultManagement.GetResult", ns), ua.Variant(other, ua.VariantType.UInt32))
            assert (status, recipe, late, threshold) == (1, 1, False, 0.5) and score == pytest.approx(20 / 255, abs=1e-3)
            with pytest.raises(ua.UaStatusCodeError) as unknown:
                await results.call_method(ua.NodeId("VisionSystem.ResultManagement.GetResult", ns),
                                          ua.Variant(999, ua.VariantType.UInt32))
            assert unknown.value.code == ua.StatusCodes.BadNoData

            with server.model_lock:  # the part in flight fills the station (max_in_flight 1)
                busy = await root.call_method(ua.NodeId("VisionSystem.StartSingleJob", ns))
                with pytest.raises(ua.UaStatusCodeError) as full:
                    await root.call_method(ua.NodeId("VisionSystem.StartSingleJob", ns))
                assert full.value.code == ua.StatusCodes.BadInvalidState
                assert await poll(node("Handshake.ErrorCode").read_value, bool) == ErrorCode.TRIGGER_WHILE_BUSY
                assert await node("Handshake.LastTriggerId").read_value() == busy + 1  # the refused part's id
            assert await node("Counters.DROPPED").read_value() == 1  # and it is rejected, not lost

    try:
        asyncio.run(plc())
        rows = read_verdicts(cfg.journal.path)
        assert [r["detail"]["tags"]["inspection"] for r in rows][:3] == ["1", "2", "3"]
    finally:
        server.close()
