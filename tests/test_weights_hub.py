"""Pretrained weights through the hub cache, against a loopback server standing in for the hub (HF_ENDPOINT):
download at the pinned revision, sha256 recorded, a corrupted download refused, the offline message,
and `lineside weights pull` → `import` on an offline host → train."""

import dataclasses
import hashlib
import json

import pytest
from hub_fixture import Hub
from mvtec_fixture import make_mvtec
from safetensors.torch import save_file
from test_dinov2 import meta_checkpoint, meta_to_hf

from lineside.cli import main as cli
from train_host.pretrained import COMMIT, REGISTRY, SHA256

ENTRY = REGISTRY["dinov2-vits14"]
KEY = (ENTRY.repo, ENTRY.revision, ENTRY.filename)
TRAIN = ["--size", "56", "--backbone", "vits14", "--depth", "1", "--bank-size", "20", "--threads", "1",
         "--weights", "dinov2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-block ViT-S/14 in Hugging Face's Dinov2Model layout, as facebook/dinov2-small serves it."""
    path = tmp_path_factory.mktemp("ck") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in meta_to_hf(meta_checkpoint(depth=1)).items()}, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("d") / "cat", n_train=4, n_good=1, n_defect=1)


@pytest.fixture
def served(checkpoint, monkeypatch, tmp_path):
    """The loopback hub serving the small checkpoint at the pinned revision (the real pins, unchanged)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with Hub() as server:
        server.files[KEY] = checkpoint
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def hub(served, checkpoint, monkeypatch):
    """As `served`, with the entry's sha256 pin set to the small checkpoint's (the real one pins Meta's file)."""
    monkeypatch.setitem(REGISTRY, ENTRY.name,
                        dataclasses.replace(ENTRY, sha256=hashlib.sha256(checkpoint).hexdigest()))
    return served


def test_dinov2_weights_download_once_at_the_pinned_revision(hub, data, checkpoint, tmp_path):
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "a"), *TRAIN]) == 0
    weights = json.loads((tmp_path / "a" / "run.json").read_text())["training"]["backbone_weights"]
    assert weights["revision"] == ENTRY.revision and weights["pinned"] and weights["repo"] == ENTRY.repo
    assert weights["pins"] == "revision and sha256"
    assert weights["sha256"] == hashlib.sha256(checkpoint).hexdigest() and weights["format"] == "huggingface"
    assert f"GET /{ENTRY.repo}/resolve/{ENTRY.revision}/{ENTRY.filename}" in hub.requests  # the pin, not main
    gets = sum(r.startswith("GET") for r in hub.requests)
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "b"), *TRAIN]) == 0
    assert sum(r.startswith("GET") for r in hub.requests) == gets  # cached: downloaded once


def test_a_corrupted_download_is_refused_and_removed(hub, data, tmp_path, capsys):
    hub.etags[KEY] = "0" * 64  # the hub says one sha256, the bytes have another
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "a"), *TRAIN]) == 2
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert not list((tmp_path / "cache").rglob("blobs/0000*"))  # nothing corrupt left in the cache


def test_a_file_the_hub_vouches_for_but_lineside_does_not_pin_is_refused(served, data, tmp_path, capsys):
    """The hub serves another file under the pinned revision, with its own (matching) sha256: only the pin
    catches it."""
    assert ENTRY.sha256 == "ae1e99fcefd534ed978cdeb8326f08030c96e28b7a81ffcbc98a857c84d14be1"
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "a"), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "not the file this lineside pins" in err and ENTRY.sha256 in err and not (tmp_path / "a").exists()
    assert not list((tmp_path / "cache").rglob("blobs/*"))  # removed from the cache


def test_pins_are_commits_and_sha256s_and_list_says_what_is_pinned(capsys):
    for entry in REGISTRY.values():
        assert entry.revision is None or COMMIT.match(entry.revision), entry.name
        assert entry.sha256 is None or SHA256.match(entry.sha256), entry.name
    assert REGISTRY["resnet18"].pinned == "revision and sha256"  # rx's default backbone
    assert REGISTRY["efficientnet_b4"].pinned == "nothing"
    assert cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "timm/resnet18.a1_in1k@491b427b45c9  pins revision and sha256" in out


def test_offline_names_the_file_and_pull_import_carry_it(hub, data, checkpoint, tmp_path, monkeypatch, capsys):
    # connected machine: pull into a folder
    assert cli(["weights", "pull", "dinov2-vits14", "--out", str(tmp_path / "carry")]) == 0
    manifest = json.loads((tmp_path / "carry" / "weights.json").read_text())
    assert manifest["weights"][0]["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    # air-gapped host: its own empty cache, offline
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "offline-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "a"), *TRAIN]) == 2
    err = capsys.readouterr().err
    expected = tmp_path / "offline-cache" / "models--facebook--dinov2-small" / "snapshots" / ENTRY.revision
    assert str(expected / "model.safetensors") in err and "lineside weights import" in err
    # a corrupted copy is refused by import
    copy = tmp_path / "carry" / "dinov2-vits14" / "model.safetensors"
    good = copy.read_bytes()
    copy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert cli(["weights", "import", str(tmp_path / "carry")]) == 2
    assert "corrupt" in capsys.readouterr().err
    copy.write_bytes(good)
    assert cli(["weights", "import", str(tmp_path / "carry")]) == 0
    gets = sum(r.startswith("GET") for r in hub.requests)
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "b"), *TRAIN]) == 0
    assert sum(r.startswith("GET") for r in hub.requests) == gets  # nothing fetched offline
    weights = json.loads((tmp_path / "b" / "run.json").read_text())["training"]["backbone_weights"]
    assert weights["sha256"] == hashlib.sha256(checkpoint).hexdigest() and weights["revision"] == ENTRY.revision


def test_a_run_without_weights_says_loudly_what_the_random_backbone_costs(data, tmp_path, capsys):
    assert cli(["train", "rx", "--data", str(data), "--out", str(tmp_path / "r"), "--size", "64",
                "--feature-dim", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "RANDOMLY initialised" in out and "0.79" in out and "--weights imagenet" in out


def test_weights_kind_must_fit_the_family(data, tmp_path, capsys):
    assert cli(["train", "rx", "--data", str(data), "--out", str(tmp_path / "r"), "--size", "64",
                "--weights", "dinov2"]) == 2
    assert "use --weights imagenet" in capsys.readouterr().err
