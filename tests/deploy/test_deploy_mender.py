"""`lineside bundle --mender`: a Mender Artifact written by Debian's `mender-artifact`, and its
`lineside-bundle` update module driven through Mender's states on a `local:` device, without
a Mender server: the test plays the Mender client, unpacking the Artifact's payload into the
module's file tree (header/, files/, tmp/) and calling the module's script state by state.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from net_helpers import free_port
from tiny_bundle import make_tiny_bundle

from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from tests.deploy.deploy_helpers import (
    REPO,
    SSH_PYTHON,
    STATION,
    device_settings,
    lineside,
    stop_service,
)

MODULE = REPO / "deploy_jetson" / "assets" / "mender" / "lineside-bundle"

pytestmark = pytest.mark.skipif(shutil.which("mender-artifact") is None,
                                reason="no mender-artifact here: apt-get install -y mender-artifact")


def mender_bundle(tmp_path, key, version: str):
    """`lineside bundle ... --mender --device-type jetson-orin-nano`, as an engineer runs it."""
    from edge_infer.bundle import Bundle

    src = make_tiny_bundle(tmp_path / f"src-{version}", height=16, width=16)
    bundle = Bundle.load(src)
    bundle.manifest.model.version = version
    bundle.save()
    config = tmp_path / f"{STATION}.yaml"
    config.write_text(f"station: {STATION}\nbundle: ./export\njournal: {{path: journal.sqlite}}\n")
    out = tmp_path / f"{version}.tar"
    r = lineside("bundle", src, "--station", config, "--key", key, "--out", out, "--mender",
                 "--device-type", "jetson-orin-nano")
    assert r.returncode == 0, r.stdout + r.stderr
    return out.with_suffix(".mender")


def file_tree(artifact, tmp_path, name):
    """What the Mender client gives an update module: header/ from the Artifact's header, files/ its payload."""
    tree = tmp_path / f"tree-{name}"
    for sub in ("header", "files", "tmp"):
        (tree / sub).mkdir(parents=True)
    with tarfile.open(artifact) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member).read() if member.isfile() else b""
            if member.name.startswith("header.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as header:
                    info = json.loads(header.extractfile("header-info").read())
                    type_info = header.extractfile("headers/0000/type-info").read()
                (tree / "header" / "artifact_name").write_text(info["artifact_provides"]["artifact_name"])
                (tree / "header" / "payload_type").write_text(info["payloads"][0]["type"])
                (tree / "header" / "type-info").write_bytes(type_info)
            elif member.name.startswith("data/0000.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as payload:
                    for f in payload.getmembers():  # plain files, by their base name, as the client stores them
                        if f.isfile():
                            (tree / "files" / Path(f.name).name).write_bytes(payload.extractfile(f).read())
    return tree


def run_state(state_name, tree, env):
    return subprocess.run([str(MODULE), state_name, str(tree)], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_mender_artifact_validates_and_the_update_module_installs_commits_and_rolls_back(tmp_path, keys):
    from tests.deploy.deploy_helpers import provision

    v2 = mender_bundle(tmp_path, keys[0], "v2")
    r = subprocess.run(["mender-artifact", "validate", str(v2)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    read = subprocess.run(["mender-artifact", "read", str(v2)], capture_output=True, text=True,
                          check=True).stdout
    assert "lineside-bundle" in read and "jetson-orin-nano" in read and "v2.tar" in read

    root, control = provision(tmp_path / "device", keys[1]), f"tcp://127.0.0.1:{free_port()}"
    settings = device_settings(root, control, python=SSH_PYTHON)
    env_file = tmp_path / "mender.env"
    env_file.write_text("".join(f"LINESIDE_{k.upper()}='{v}'\n" for k, v in settings.items()))
    env = dict(os.environ, LINESIDE_MENDER_ENV=str(env_file))
    try:
        tree = file_tree(v2, tmp_path, "v2")
        assert (tree / "header" / "payload_type").read_text() == "lineside-bundle"
        assert run_state("Download", tree, env).returncode == 0
        assert run_state("SupportsRollback", tree, env).stdout.strip() == "Yes"
        r = run_state("ArtifactInstall", tree, env)
        assert r.returncode == 0, r.stderr
        assert run_state("NeedsArtifactReboot", tree, env).stdout.strip() == "No"
        r = run_state("ArtifactCommit", tree, env)
        assert r.returncode == 0, r.stderr
        assert run_state("Cleanup", tree, env).returncode == 0
        assert state(root)["current"]["version"] == "v2"
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v2"

        # v3 does not come up: ArtifactInstall fails, Mender calls ArtifactRollback, v2 serves again
        v3 = mender_bundle(tmp_path, keys[0], "v3")
        env_file.write_text(env_file.read_text().replace(
            f"LINESIDE_RESTART='{settings['restart']}'", f"LINESIDE_RESTART='{settings['restart']} --refuse-version v3'"))
        assert "--refuse-version v3" in env_file.read_text()
        tree = file_tree(v3, tmp_path, "v3")
        r = run_state("ArtifactInstall", tree, env)
        assert r.returncode != 0 and "did not come up healthy" in r.stderr, r.stderr
        r = run_state("ArtifactRollback", tree, env)
        assert r.returncode == 0, r.stderr
        assert run_state("ArtifactFailure", tree, env).returncode == 0
        assert run_state("Cleanup", tree, env).returncode == 0
        st = state(root)
        assert st["current"]["version"] == "v2" and all(b != "v3" for b in st["bundles"])
        assert len(st["bundles"]) == 1  # the refused v3 was removed
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v2"
    finally:
        stop_service(root)


def test_mender_needs_a_device_type(tmp_path, keys):
    src = make_tiny_bundle(tmp_path / "src", height=16, width=16)
    config = tmp_path / "c.yaml"
    config.write_text(f"station: {STATION}\nbundle: ./export\n")
    r = lineside("bundle", src, "--station", config, "--key", keys[0], "--out", tmp_path / "b.tar", "--mender")
    assert r.returncode != 0 and "--mender needs --device-type" in r.stderr
