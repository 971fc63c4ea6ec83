"""Mender: a bundle tar as a Mender Artifact, and the `lineside-bundle` update module that installs it.

Host side (`lineside bundle --mender --device-type T`): the signed tar becomes the payload of
a module-image Artifact of type ``lineside-bundle``, written by Mender's own
``mender-artifact`` tool, so a Mender server deploys bundles with its groups, schedules and
signed Artifacts.

Device side: Mender runs ``/usr/share/mender/modules/v3/lineside-bundle STATE FILE_TREE``
(deploy_jetson/assets/mender/lineside-bundle), which runs ``python -m deploy_jetson.mender
STATE FILE_TREE`` here. The states map onto the device commands `lineside flash` uses:

    Download             nothing: Mender stores the payload in FILE_TREE/files/
    ArtifactInstall      copy into incoming/, install (verify, smoke-run), build the engine,
                         switch, restart, health on the NEW bundle; a failure exits non-zero
    NeedsArtifactReboot  "No": the service restarts, the device does not
    SupportsRollback     "Yes"
    ArtifactCommit       prune old bundles (the new one stays)
    ArtifactRollback     restore current/previous as before the install, remove the new
                         bundle, restart, health on the old one
    ArtifactFailure, Cleanup and the rest: nothing to do

The device's settings (as in a lineside inventory) come from the environment, which the
module script reads from /etc/lineside/mender.env: LINESIDE_ROOT, LINESIDE_PYTHON,
LINESIDE_RESTART, LINESIDE_CONTROL, LINESIDE_HEALTH_TIMEOUT, LINESIDE_BUILD,
LINESIDE_TRT_CHECK, LINESIDE_BUILD_TIMEOUT, LINESIDE_KEEP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edge_infer.errors import LinesideError

MODULE = "lineside-bundle"
SETTINGS_ENV = {"root": "LINESIDE_ROOT", "python": "LINESIDE_PYTHON", "restart": "LINESIDE_RESTART",
                "control": "LINESIDE_CONTROL", "health_timeout": "LINESIDE_HEALTH_TIMEOUT",
                "build": "LINESIDE_BUILD", "trt_check": "LINESIDE_TRT_CHECK",
                "build_timeout": "LINESIDE_BUILD_TIMEOUT", "keep": "LINESIDE_KEEP"}


def write_artifact(tar: Path, out: Path, device_types: list[str], version: str, ident: str) -> Path:
    """A Mender module-image Artifact holding the bundle tar, written by `mender-artifact`."""
    tool = shutil.which("mender-artifact")
    if tool is None:
        raise LinesideError("--mender needs Mender's `mender-artifact` tool: apt-get install mender-artifact "
                            "(Debian/Ubuntu) or see docs.mender.io")
    if not device_types:
        raise LinesideError("--mender needs --device-type, e.g. --device-type jetson-orin-nano")
    argv = [tool, "write", "module-image", "--type", MODULE, "--artifact-name", f"lineside-{version}-{ident}",
            "--file", str(tar), "--output-path", str(out), "--software-name", MODULE,
            "--software-version", f"{version}@{ident}", "--provides", f"lineside.bundle_id:{ident}"]
    for t in device_types:
        argv += ["--device-type", t]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise LinesideError(f"mender-artifact could not write {out}: {(r.stderr or r.stdout).strip()}")
    return out


# --- the update module, on the device -------------------------------------------------------------

def _device():
    from .flash import Device
    from .targets import parse_target
    from .transport import LocalShell

    settings = {k: os.environ[v] for k, v in SETTINGS_ENV.items() if os.environ.get(v)}
    root = settings.pop("root", "/opt/lineside")
    target = parse_target(f"local:{root}", settings, name="mender")
    return Device(target, LocalShell(target), progress=lambda text: print(text, file=sys.stderr, flush=True))


def _payload(tree: Path) -> Path:
    tars = sorted((tree / "files").glob("*.tar"))
    if len(tars) != 1:
        raise LinesideError(f"{tree}/files holds {len(tars)} bundle tars, not one: this Artifact was not made by "
                            "`lineside bundle --mender`")
    return tars[0]


def install(tree: Path) -> None:
    from .flash import StepFailed, _build_engine, _check_runs_engine, label

    device, saved = _device(), tree / "tmp" / "lineside.json"
    root = device.target.root
    st = device.state()
    if st["station"] is None:
        raise LinesideError(f"{root}/station is missing: provision the device first with `lineside provision`")
    tar = _payload(tree)
    sha = hashlib.sha256(tar.read_bytes()).hexdigest()
    name = f"{sha}.tar"
    (Path(root) / "incoming").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tar, Path(root) / "incoming" / f"{name}.part")
    device.call("copy", "upload-commit", root, name, sha)
    installed = device.call("install", "install", root, name, "--smoke")
    # What ArtifactRollback needs, written before anything that runs changes.
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"state": st, "new": installed["id"]}))
    from .flash import Outcome

    out = Outcome("mender")
    engine = _build_engine(device, installed["path"], installed["id"], out)
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    saved.write_text(json.dumps({"state": st, "new": installed["id"], "switched": True}))
    device.call("switch", "switch", root, installed["id"])
    device.restart(st["station"])
    try:
        answer = device.health(st["station"], old_bundle=st["current"] and st["current"]["id"])
        _check_runs_engine(answer, engine)  # as flash does: a silent fall-back from the built engine fails
    except StepFailed as exc:
        raise LinesideError(f"the new bundle did not come up healthy ({exc.message}); Mender rolls back to "
                            f"{label(st['current'])}") from None
    print(f"installed {installed.get('version')}@{installed['id'][:8]}: {answer.get('status')}", file=sys.stderr)


def rollback(tree: Path) -> None:
    from .flash import BundleInfo, Outcome, StepFailed, _roll_back

    saved = tree / "tmp" / "lineside.json"
    if not saved.is_file():  # the install stopped before it changed anything
        return
    data = json.loads(saved.read_text())
    device, st = _device(), data["state"]
    if not data.get("switched"):  # failed before the switch (e.g. the engine build): the old one still runs
        device.call("cleanup", "remove", device.target.root, data["new"])
        return
    new = BundleInfo(Path("-"), "", data["new"], "", st["station"])
    out = Outcome("mender")
    _roll_back(device, st, st["station"], new, StepFailed("ArtifactInstall", "Mender rolls the update back"), out)
    if out.result != "rolled back":
        raise LinesideError(out.message)
    print(out.message, file=sys.stderr)


def commit(tree: Path) -> None:
    device = _device()
    device.call("prune", "prune", device.target.root, "--keep", device.target.settings.keep)


def module_state(state: str, tree: Path) -> str | None:
    """Run one state; return what Mender expects on stdout for the query states."""
    if state == "NeedsArtifactReboot":
        return "No"
    if state == "SupportsRollback":
        return "Yes"
    if state == "ArtifactInstall":
        install(tree)
    elif state == "ArtifactRollback":
        rollback(tree)
    elif state == "ArtifactCommit":
        commit(tree)
    return None  # Download (the payload is in files/), ArtifactFailure, Cleanup, and states added later


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m deploy_jetson.mender STATE FILE_TREE (Mender's update module protocol)",
              file=sys.stderr)
        return 2
    from .flash import StepFailed

    try:
        answer = module_state(argv[0], Path(argv[1]))
    except (LinesideError, StepFailed) as exc:
        print(f"lineside-bundle {argv[0]}: {exc}", file=sys.stderr)
        return 1
    if answer:
        print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
