"""Ed25519 signing and the device's refusals: unsigned, tampered, untrusted, unlisted files, wrong station."""

from __future__ import annotations

import json
import stat
import tarfile

import pytest

from edge_infer.bundle import MANIFEST
from edge_infer.errors import LinesideError
from edge_infer.signing import (
    SIGNATURE,
    extract_bundle_tar,
    generate_keypair,
    load_trusted_keys,
    sign_bundle,
    verify_bundle,
)
from tiny_bundle import make_tiny_bundle
from tests.deploy.deploy_helpers import STATION


@pytest.fixture
def signed(tmp_path, keys, tars):
    root = extract_bundle_tar(tars["v1"], tmp_path / "b")
    return root, load_trusted_keys([keys[1]])


def test_keypair_files_and_permissions(tmp_path):
    private, public = generate_keypair(tmp_path, "line")
    assert private.name == "line.sign.key" and public.name == "line.sign.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(LinesideError, match="already exists"):
        generate_keypair(tmp_path, "line")


def test_signed_bundle_verifies_and_describes_itself(signed):
    root, trusted = signed
    v = verify_bundle(root, trusted, STATION)
    info = v.describe()
    assert info["station"] == STATION and info["version"] == "v1"
    assert info["key_id"] in trusted
    assert set(info["files"]) == {"model.onnx", "thresholds.json", "station.yaml"}
    # without a trust list the carried public key still proves the bundle is intact
    assert verify_bundle(root, None, None).id == v.id


def test_unsigned_bundle_is_refused(tmp_path, keys):
    root = make_tiny_bundle(tmp_path / "plain")
    with pytest.raises(LinesideError, match="unsigned"):
        verify_bundle(root, load_trusted_keys([keys[1]]), None)


def test_altered_file_is_refused(signed):
    root, trusted = signed
    (root / "thresholds.json").write_text('{"image": 0.99}')
    with pytest.raises(LinesideError, match="does not match the sha256"):
        verify_bundle(root, trusted, STATION)


def test_altered_manifest_breaks_the_signature(signed):
    root, trusted = signed
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["station"] = "press-9"
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LinesideError, match="altered after signing"):
        verify_bundle(root, trusted, "press-9")
    with pytest.raises(LinesideError, match="altered after signing"):
        verify_bundle(root, None, None)


def test_untrusted_key_is_refused(signed, tmp_path):
    root, trusted = signed
    other_private, other_public = generate_keypair(tmp_path / "other", "rogue")
    sign_bundle(root, other_private)
    with pytest.raises(LinesideError, match="not trusted here"):
        verify_bundle(root, trusted, STATION)
    with pytest.raises(LinesideError, match="no trusted signing keys"):
        verify_bundle(root, {}, STATION)


def test_unlisted_file_is_refused(signed):
    root, trusted = signed
    (root / "payload.sh").write_text("rm -rf /\n")
    with pytest.raises(LinesideError, match="payload.sh.*not list"):
        verify_bundle(root, trusted, STATION)


def test_wrong_station_is_refused(signed):
    root, trusted = signed
    with pytest.raises(LinesideError, match="made for press-1.*'press-2'"):
        verify_bundle(root, trusted, "press-2")


def test_tar_with_escaping_path_is_refused(tmp_path, signed):
    root, _ = signed
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(root / MANIFEST, arcname="../manifest.json")
    with pytest.raises(LinesideError, match="not a plain file inside"):
        extract_bundle_tar(evil, tmp_path / "x")
    assert not (tmp_path / "manifest.json").exists()


def test_signature_file_garbage_is_refused(signed):
    root, trusted = signed
    (root / SIGNATURE).write_text("not json")
    with pytest.raises(LinesideError, match="not a valid signature file"):
        verify_bundle(root, trusted, STATION)


def test_keys_command_writes_a_pair(tmp_path, capsys):
    from lineside.cli import main

    assert main(["keys", "ci", "--type", "signing", "--out", str(tmp_path)]) == 0
    assert "ci.sign.pub" in capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "ci.sign.key").stat().st_mode) == 0o600
    assert len(load_trusted_keys([tmp_path])) == 1  # the .pub loads as a trusted key


# --- issue 20 joints 1 and 3: the device's own data beside the signed content --------------------------------


def built_engine(root, precision="fp32"):
    """What build-engine leaves in a bundle: the engine, its sidecars and ONNX Runtime's TensorRT cache."""
    engines = root / "engines"
    (engines / "ort-trt").mkdir(parents=True)
    (engines / f"model.{precision}.engine").write_bytes(b"serialized engine")
    (engines / f"model.{precision}.engine.json").write_text("{}")
    (engines / f"model.{precision}.engine.layers.json").write_text("{}")
    (engines / "ort-trt" / "TensorrtExecutionProvider_cache.engine").write_bytes(b"cache")


def test_a_device_built_engine_keeps_the_bundle_verified(signed):
    root, trusted = signed
    built_engine(root)
    assert verify_bundle(root, trusted, STATION).version == "v1"
    (root / "notes.txt").write_text("unlisted, outside the device's folders")
    with pytest.raises(LinesideError, match="notes.txt, which its signed manifest does not list"):
        verify_bundle(root, trusted, STATION)
    (root / "notes.txt").unlink()
    (root / "model.onnx").write_bytes(b"tampered")  # a signed file is still checked, engine or not
    with pytest.raises(LinesideError, match="does not match the sha256"):
        verify_bundle(root, trusted, STATION)


def test_a_bundle_may_not_bring_engines_or_local_data(signed):
    root, trusted = signed
    built_engine(root)
    with pytest.raises(LinesideError, match="brings engines, but engines/ is written by the device itself"):
        verify_bundle(root, trusted, STATION, incoming=True)
    (root / "engines").rename(root / "moved")
    with pytest.raises(LinesideError, match="moved/"):
        verify_bundle(root, trusted, STATION)


def test_recalibrating_a_signed_bundle_keeps_its_signature_and_its_engine(signed, tmp_path, monkeypatch):
    from edge_infer.backends import engine_problem
    from edge_infer.bundle import Bundle
    from lineside.cli import main as cli
    from tiny_bundle import gray
    import cv2

    root, trusted = signed
    good = tmp_path / "good"
    good.mkdir()
    for i in range(40):
        cv2.imwrite(str(good / f"{i:02d}.png"), gray(60 + i))

    def calibrate(*extra):
        assert cli(["calibrate", str(root), "--station", STATION, "--good", str(good), "--allow-few",
                    "--out", str(tmp_path / "cal"), *extra]) == 0

    calibrate()
    verify_bundle(root, trusted, STATION)  # the signed content is untouched
    monkeypatch.setenv("LINESIDE_ENGINE_STANDIN", "1")
    assert cli(["build-engine", str(root)]) == 0
    calibrate("--target-frr", "0.05")  # again, with the engine built
    verified = verify_bundle(root, trusted, STATION)
    thresholds, source = verified.bundle.thresholds_with_source()
    assert source == "local/thresholds.json" and thresholds.image == pytest.approx((60 + 39) / 255, abs=0.02)
    assert thresholds.provenance["model_sha256"] == verified.bundle.model_sha256("fp32")
    assert engine_problem(Bundle.load(root), "fp32") is None  # the engine is not stale
    # local thresholds made for another model are refused, not applied
    (root / "local" / "thresholds.json").write_text(thresholds.model_copy(
        update={"provenance": {"model_sha256": "0" * 64}}).model_dump_json())
    with pytest.raises(LinesideError, match="calibrated for model sha256 0000"):
        _ = Bundle.load(root).thresholds
