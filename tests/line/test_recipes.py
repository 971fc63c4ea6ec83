"""Recipes: a switch mid-stream changes no part's verdict half-way; bad recipes are refused."""

import threading

import pytest
from line_helpers import gray, line_station, make_tiny_bundle, start_line, wait_until

from edge_infer.bundle import Bundle, sha256_file
from edge_infer.errors import LinesideError
from edge_infer.journal import read_verdicts
from edge_infer.line.config import Recipe
from edge_infer.line.plc_signals import ErrorCode, PlcError
from edge_infer.line.recipes import verify_recipe_bundle


def two_recipes(tmp_path):
    a = make_tiny_bundle(tmp_path / "bundle-a", image_threshold=0.5)
    b = make_tiny_bundle(tmp_path / "bundle-b", height=24, width=24, image_threshold=0.9)
    return [{"id": 1, "name": "part-a", "bundle": str(a)},
            {"id": 2, "name": "part-b", "bundle": str(b), "thresholds": {"image": 0.9}}]


def test_a_switch_mid_stream_changes_no_parts_verdict_half_way(tmp_path):
    cfg = line_station(tmp_path, {"max_in_flight": 3}, recipes=two_recipes(tmp_path))
    sha = {str(r.id): sha256_file(r.bundle / "manifest.json") for r in cfg.line.recipes}
    server, service = start_line(cfg, lambda: gray(180))  # score 0.706: NG under part-a, OK under part-b
    stop = threading.Event()

    def trigger_forever():
        while not stop.is_set():
            service.trigger("network", "test")  # refused while busy or switching: that is the point
            stop.wait(0.003)

    feeder = threading.Thread(target=trigger_forever)
    feeder.start()
    try:
        assert wait_until(lambda: service.signals.counters["NG"] >= 10)
        answer = service.select_recipe(2, "tester", wait=True)
        assert answer == {"recipe": 2, "name": "part-b", "changed": True}
        assert wait_until(lambda: service.signals.counters["OK"] >= 10)
    finally:
        stop.set()
        feeder.join()
        server.close()
    rows = read_verdicts(cfg.journal.path)
    by_recipe = {"1": [], "2": []}
    for row in rows:
        by_recipe[row["detail"]["tags"]["recipe"]].append(row)
    assert len(by_recipe["1"]) >= 10 and len(by_recipe["2"]) >= 10
    for recipe, expected, threshold in (("1", "NG", 0.5), ("2", "OK", 0.9)):
        for row in by_recipe[recipe]:  # every part scored whole by the recipe it was triggered under
            assert (row["status"], row["threshold"], row["detail"]["bundle_sha256"]) == \
                (expected, threshold, sha[recipe])
    switches = service.journal.__class__(cfg.journal.path, "line1").events("recipe")
    assert switches[-1]["who"] == "tester" and (switches[-1]["from"], switches[-1]["to"]) == (1, 2)
    assert switches[0]["who"] == "startup" and switches[0]["from"] is None


def test_unknown_and_altered_recipes_are_refused_and_the_line_keeps_its_recipe(tmp_path):
    recipes = two_recipes(tmp_path)
    cfg = line_station(tmp_path, {}, recipes=recipes)
    server, service = start_line(cfg, lambda: gray(20))
    try:
        with pytest.raises(PlcError) as info:
            service.select_recipe(9, "tester")
        assert info.value.code == ErrorCode.UNKNOWN_RECIPE
        (tmp_path / "bundle-b" / "model.onnx").write_bytes(b"tampered")
        with pytest.raises(PlcError) as info:
            service.select_recipe(2, "tester", wait=True)
        assert info.value.code == ErrorCode.RECIPE_REJECTED and "sha256" in info.value.detail
        assert service.signals.recipe_id == 1 and service.signals.error_code == ErrorCode.RECIPE_REJECTED
        assert service.trigger("network", "t") == 1  # still inspecting with part-a
        assert wait_until(lambda: service.signals.counters["OK"] == 1)
        refused = [e["to"] for e in service.journal.events("recipe_refused")]
        assert refused == [9, 2]
    finally:
        server.close()


def signed_bundle(root, station, private_key):
    from edge_infer.signing import sign_bundle

    make_tiny_bundle(root)
    bundle = Bundle.load(root)
    bundle.manifest.station = station
    bundle.save()
    sign_bundle(root, private_key)
    return root


def test_with_trusted_keys_only_bundles_signed_for_the_station_are_selected(tmp_path):
    signing = pytest.importorskip("edge_infer.signing")
    private, public = signing.generate_keypair(tmp_path / "keys", "line")
    rogue, _ = signing.generate_keypair(tmp_path / "rogue", "rogue")
    (tmp_path / "trusted").mkdir()  # a device holds public keys only
    (tmp_path / "trusted" / public.name).write_bytes(public.read_bytes())
    good = Recipe(id=1, name="a", bundle=signed_bundle(tmp_path / "good", "line1", private))
    assert isinstance(verify_recipe_bundle(good, tmp_path / "trusted", "line1"), Bundle)
    refusals = {
        "unsigned": Recipe(id=2, name="b", bundle=make_tiny_bundle(tmp_path / "unsigned")),
        "not trusted": Recipe(id=3, name="c", bundle=signed_bundle(tmp_path / "rogue-b", "line1", rogue)),
        "made for": Recipe(id=4, name="d", bundle=signed_bundle(tmp_path / "other", "press-9", private)),
    }
    for why, recipe in refusals.items():
        with pytest.raises(PlcError) as info:
            verify_recipe_bundle(recipe, tmp_path / "trusted", "line1")
        assert info.value.code == ErrorCode.RECIPE_REJECTED and why in info.value.detail
    assert isinstance(verify_recipe_bundle(refusals["unsigned"], None, "line1"), Bundle)  # no keys: sha256 only


def test_line_config_errors_name_the_key(tmp_path):
    with pytest.raises(LinesideError, match="recipe ids must be distinct"):
        line_station(tmp_path, {}, recipes=[{"id": 1, "name": "a", "bundle": "x"}, {"id": 1, "name": "b",
                                                                                      "bundle": "y"}])
    with pytest.raises(LinesideError, match="exactly one of delay_ms or encoder_counts"):
        line_station(tmp_path, {"reject": {"pulse_ms": 5}})


def test_serve_refusing_its_start_up_recipe_exits_with_a_message(tmp_path):
    """A bundle the line's trusted keys refuse stops `lineside serve` with a sentence, not a traceback."""
    import subprocess
    import sys

    from edge_infer.signing import generate_keypair

    keys = tmp_path / "keys"
    generate_keypair(keys, "release")
    import cv2

    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "0.png"), gray(100))
    line_station(tmp_path, {"trusted_keys": str(keys), "camera": {"source": str(tmp_path / "frames")}})
    run = subprocess.run([sys.executable, "-m", "lineside", "serve", str(tmp_path / "station.yaml")], check=False,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "cannot start with recipe 1" in run.stderr and "unsigned" in run.stderr


def test_reload_keeps_the_recipe_checks_its_signature_and_publishes_the_new_scale(tmp_path):
    """`ctl reload` on a line station: the running recipe's bundle, verified like a switch, on its score scale."""
    from edge_infer.control import request
    from edge_infer.score_scale import GOOD_QUANTILES, RAW
    from edge_infer.signing import generate_keypair, sign_bundle

    keys = tmp_path / "keys"
    private, _ = generate_keypair(keys, "release")
    bundle = make_tiny_bundle(tmp_path / "bundle-a")
    loaded = Bundle.load(bundle)
    loaded.manifest.station = "line1"
    loaded.save()
    sign_bundle(bundle, private)
    cfg = line_station(tmp_path, {"trusted_keys": str(keys)},
                       recipes=[{"id": 1, "name": "part-a", "bundle": str(bundle), "thresholds": {"image": 0.6}}])
    server, service = start_line(cfg, lambda: gray(100))
    try:
        assert service.signals.score_scale == RAW
        unsigned = make_tiny_bundle(tmp_path / "unsigned")
        answer = request(cfg.sockets.control, {"cmd": "reload", "bundle": str(unsigned)}, timeout_s=20)
        assert not answer["ok"] and "unsigned" in answer["error"]

        scaled = tmp_path / "scaled"
        scaled_bundle = make_tiny_bundle(scaled)
        manifest = Bundle.load(scaled_bundle)
        manifest.manifest.station = "line1"
        manifest.manifest.score_normalization = {"method": "good_quantiles", "q50": 0.2, "q99": 0.4}
        manifest.save()
        sign_bundle(scaled_bundle, private)
        answer = request(cfg.sockets.control, {"cmd": "reload", "bundle": str(scaled)}, timeout_s=20)
        assert answer["ok"] and answer["signature_checked"], answer
        assert answer["thresholds"]["image"] == 0.6 and answer["source"]["image"] == "station"  # the recipe's pin
        assert service.signals.score_scale == GOOD_QUANTILES and server.model.recipe.id == 1
    finally:
        server.close()
