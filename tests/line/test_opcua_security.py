"""OPC UA security with real asyncua clients: certificates, user names mapped to roles,
anonymous read-only; every change a user makes is in `lineside audit` with their name."""

import asyncio

import pytest

pytest.importorskip("asyncua")
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from line_helpers import (
    free_port,
    gray,
    line_station,
    start_line,
    wait_until,
)
from security_helpers import PASSWORDS, audit, certificate

from edge_infer.errors import LinesideError
from edge_infer.line.opcua import NAMESPACE

ACTIVATE = "VisionSystem.RecipeManagement.ActivateRecipe"


@pytest.fixture
def secured(tmp_path, accounts, serve_line):
    port = free_port()
    server_cert, server_key = certificate(tmp_path / "pki", "server", uri="urn:lineside:line1")
    plc_cert, plc_key = certificate(tmp_path / "pki", "plc", uri="urn:lineside:plc")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "plc.cert.pem").write_bytes(plc_cert.read_bytes())
    stranger = certificate(tmp_path / "other", "stranger", uri="urn:lineside:stranger")
    frames = iter([gray(20)] * 100)
    service = serve_line({"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/lineside", "security": {
        "certificate": str(server_cert), "private_key": str(server_key), "trusted_clients": str(trusted),
        "modes": ["Sign", "SignAndEncrypt"], "anonymous": "read-only"}}}, lambda: next(frames),
        recipes=accounts.recipes, security=accounts.security())
    return {"url": f"opc.tcp://127.0.0.1:{port}/lineside", "cert": (plc_cert, plc_key), "server_cert": server_cert,
           "stranger": stranger, "service": service, "config": tmp_path / "station.yaml"}


async def client(env, user=None, cert=None, mode=ua.MessageSecurityMode.SignAndEncrypt):
    c = Client(env["url"], timeout=5)
    cert, key = cert or env["cert"]
    c.application_uri = "urn:lineside:stranger" if cert == env["stranger"][0] else "urn:lineside:plc"
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key), server_certificate=str(env["server_cert"]),
                         mode=mode)
    if user:
        c.set_user(user)
        c.set_password(PASSWORDS[user])
    return c


async def activate(c, recipe_id):
    ns = await c.get_namespace_index(NAMESPACE)
    recipes = c.get_node(ua.NodeId("VisionSystem.RecipeManagement", ns))
    return await recipes.call_method(ua.NodeId(ACTIVATE, ns), ua.Variant(recipe_id, ua.VariantType.UInt32))


def test_anonymous_reads_but_cannot_call_and_operator_cannot_switch_recipes(secured):
    async def run():
        async with await client(secured) as anonymous:
            ns = await anonymous.get_namespace_index(NAMESPACE)
            active = anonymous.get_node(ua.NodeId("VisionSystem.RecipeManagement.ActiveRecipeId", ns))
            assert await active.read_value() == 1  # read-only access works
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await anonymous.get_node(ua.NodeId("VisionSystem", ns)).call_method(
                    ua.NodeId("VisionSystem.StartSingleJob", ns))
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
        async with await client(secured, "olga", mode=ua.MessageSecurityMode.Sign) as operator:
            ns = await operator.get_namespace_index(NAMESPACE)
            inspection = await operator.get_node(ua.NodeId("VisionSystem", ns)).call_method(
                ua.NodeId("VisionSystem.StartSingleJob", ns))
            assert inspection == 1  # an operator may trigger
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await activate(operator, 2)
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied

    asyncio.run(run())
    assert secured["service"].recipes.active.id == 1
    assert secured["service"].signals.counters["triggers"] == 1
    refused = audit(secured["config"], "--kind", "opcua_refused")
    assert [(e["who"], e["methods"]) for e in refused] == [("anonymous@opcua", ["StartSingleJob"]),
                                                           ("olga@opcua", ["ActivateRecipe"])]


def test_engineer_with_the_right_certificate_switches_recipes_and_audit_names_them(secured):
    async def run():
        async with await client(secured, "eve") as engineer:
            await activate(engineer, 2)  # raises on a Bad status

    asyncio.run(run())
    service = secured["service"]
    assert wait_until(lambda: service.recipes.active.id == 2)
    events = audit(secured["config"], "--who", "eve")
    assert any(e["kind"] == "recipe" and e["who"] == "eve@opcua" for e in events), events


def test_wrong_password_untrusted_certificate_and_no_security_are_refused(secured):
    async def attempt(make):
        c = await make()
        try:
            await c.connect()
        except Exception:  # noqa: BLE001 (asyncua raises status-code errors or closes the channel)
            return False
        await c.disconnect()
        return True

    async def wrong_password():
        c = await client(secured, "eve")
        c.set_password("not-the-password")
        return c

    async def untrusted():
        return await client(secured, "eve", cert=secured["stranger"])

    async def plain():
        c = Client(secured["url"], timeout=5)
        c.set_user("eve")
        c.set_password(PASSWORDS["eve"])
        return c

    async def run():
        assert await attempt(lambda: client(secured, "eve")) is True  # the control: right cert and user
        for make in (wrong_password, untrusted, plain):
            assert await attempt(make) is False, make.__name__

    asyncio.run(run())


def test_security_without_users_and_anonymous_off_is_refused_at_start(tmp_path):
    cert, key = certificate(tmp_path / "pki", "server", uri="urn:lineside:line1")
    cfg = line_station(tmp_path, {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/lineside",
                                            "security": {"certificate": str(cert), "private_key": str(key)}}})
    with pytest.raises(LinesideError, match="needs users"):
        start_line(cfg, lambda: gray(20))


def test_an_untrusted_client_that_names_no_certificate_in_create_session_is_refused(secured):
    """asyncua's own check looks only at the certificate a client names in CreateSession; this
    crafted client names none, so only the check on its channel's certificate can refuse it."""

    async def run():
        c = await client(secured, "eve", cert=secured["stranger"])
        create_session = c.uaclient.create_session

        async def without_certificate(params):
            params.ClientCertificate = None
            return await create_session(params)

        c.uaclient.create_session = without_certificate
        async with c:
            await activate(c, 2)

    with pytest.raises((ua.UaError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        asyncio.run(run())
    assert secured["service"].recipes.active.id == 1
