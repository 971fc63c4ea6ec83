"""The device side of flashing: run ON the device as `python -m deploy_jetson.device ...`.

The host drives a flash one small step at a time through these subcommands (over SSH,
or a local shell for `local:` targets), so each step either completes or leaves the
device as it was. Layout under the device root::

    station              the station this device serves (one line, written at provisioning)
    trusted-keys/*.pub   public keys whose signatures this device accepts
    incoming/            bundle tars being copied (NAME.part while incomplete)
    bundles/<id>/        unpacked, verified bundles, one folder per bundle id
    current -> bundles/<id>    what the service runs (replaced atomically)
    previous -> bundles/<id>   what `lineside rollback` returns to

Every subcommand prints one JSON object on success; on failure it prints the reason on
stderr and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from edge_infer.errors import LinesideError

# Only `install` needs the bundle and signing code (pydantic, OpenCV, ONNX Runtime: seconds to import on
# a Jetson); every other step imports nothing heavy, so a flash's many small steps stay quick.
MANIFEST = "manifest.json"
BUNDLE_ID = r"[0-9a-f]{12}"  # edge_infer.signing.bundle_id
TAR_NAME = r"[0-9a-f]{64}\.tar"
HEALTH_KEY = "keys/health.key_secret"  # the health check's CurveZMQ key pair, relative to the device root


def read_station(root: Path) -> str | None:
    path = root / "station"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _checked(value: str, pattern: str, what: str) -> str:
    # Names from the host become paths here: never let one climb out of the device root.
    if not re.fullmatch(pattern, value):
        raise LinesideError(f"{value!r} is not a valid {what}")
    return value


def link_info(root: Path, name: str) -> dict | None:
    link = root / name
    if not link.is_symlink():
        return None
    target = root / os.readlink(link)
    info = {"id": target.name, "version": None, "station": None, "present": target.is_dir()}
    try:
        m = json.loads((target / MANIFEST).read_text())
        info.update(version=m["model"]["version"], station=m.get("station"))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged or missing target is reported as such by "present"/"version"
    return info


def state(root: Path) -> dict:
    keys = sorted(p.name for p in (root / "trusted-keys").glob("*.pub"))
    bundles = sorted(p.name for p in (root / "bundles").glob("*") if p.is_dir() and not p.name.startswith("."))
    return {"root": str(root), "station": read_station(root), "current": link_info(root, "current"),
            "previous": link_info(root, "previous"), "trusted_keys": keys, "bundles": bundles}


def set_link(root: Path, name: str, bundle: str | None) -> None:
    """Point ROOT/name at bundles/<bundle> atomically (a new link renamed over the old), or remove it."""
    link = root / name
    if bundle is None:
        if link.is_symlink():
            link.unlink()
        return
    tmp = root / f".{name}.{os.getpid()}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(f"bundles/{bundle}", tmp)
    os.replace(tmp, link)


def upload_state(root: Path, name: str) -> dict:
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    part = incoming / f"{name}.part"
    return {"complete": (incoming / name).is_file(), "part_bytes": part.stat().st_size if part.is_file() else 0}


def upload_commit(root: Path, name: str, sha256: str) -> dict:
    incoming = root / "incoming"
    done, part = incoming / name, incoming / f"{name}.part"
    path = done if done.is_file() else part
    if not path.is_file():
        raise LinesideError(f"{part} is missing: the copy did not arrive; flash again")
    actual = _sha256(path)
    if actual != sha256:
        path.unlink()
        raise LinesideError(f"the copied bundle's sha256 is {actual[:12]}…, not {sha256[:12]}…: the partial copy "
                            "was damaged and has been deleted; flash again to copy it afresh")
    os.replace(path, done)
    return {"path": str(done), "sha256": actual}


def upload_join(root: Path, name: str, sha256: str) -> dict:
    """Join the chunks an Ansible copy left in incoming/NAME.chunks/ (in name order), then check as upload-commit.

    Ansible's copy module skips a chunk whose checksum already matches, so a copy cut off
    midway resumes at the first missing chunk on the next run.
    """
    incoming = root / "incoming"
    chunks = incoming / f"{name}.chunks"
    if not (incoming / name).is_file():
        parts = sorted(chunks.glob("chunk.*")) if chunks.is_dir() else []
        if not parts:
            raise LinesideError(f"{chunks} holds no chunks: the copy did not arrive; run the roll-out again")
        tmp = incoming / f"{name}.part"
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    result = upload_commit(root, name, sha256)
    shutil.rmtree(chunks, ignore_errors=True)  # the joined tar passed its sha256 check
    return result


def _sha256(path: Path) -> str:
    # edge_infer.bundle.sha256_file does the same, but importing it pulls in OpenCV and pydantic.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install(root: Path, tar_name: str, smoke: bool) -> dict:
    """Unpack, verify (signature, hashes, station) and smoke-run a copied bundle into bundles/<id>."""
    from edge_infer.signing import extract_bundle_tar, load_trusted_keys, verify_bundle

    station = read_station(root)
    if station is None:
        raise LinesideError(f"{root}/station is missing: this device does not know its station; set it with "
                            "`lineside provision TARGET --station NAME`")
    tar_path = root / "incoming" / tar_name
    staging = root / "bundles" / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract_bundle_tar(tar_path, staging)
        verified = verify_bundle(staging, load_trusted_keys([root / "trusted-keys"]), station, incoming=True)
        if smoke:
            smoke_run(verified.bundle)
        final = root / "bundles" / verified.id
        if (root / "current").is_symlink() and os.readlink(root / "current") == f"bundles/{verified.id}":
            raise LinesideError(f"bundle {verified.id} is already the current one on this device")
        described = verified.describe()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tar_path.unlink(missing_ok=True)
    return {**described, "path": str(final)}


def smoke_run(bundle) -> None:
    """Load every ONNX variant on ONNX Runtime and score one blank frame: the bundle runs on this device."""
    import numpy as np

    from edge_infer.backends.ort import OrtBackend

    spec, m = bundle.input_spec, bundle.manifest
    for precision in sorted(m.variants):
        try:
            with OrtBackend(bundle.model_path(precision), spec, 1, provider="ort-cpu", threads=1) as backend:
                out = backend.run(np.zeros((1, *spec.graph_shape), np.uint8))
        except LinesideError:
            raise
        except Exception as exc:  # onnxruntime raises its own types for bad graphs
            raise LinesideError(f"the {precision} model of bundle {bundle.root} does not run on this device: "
                                f"{exc}") from None
        if out.score.shape != (1,) or not np.isfinite(out.score).all():
            raise LinesideError(f"the {precision} model of bundle {bundle.root} gave no finite score for a blank "
                                f"frame (score {out.score!r}): re-export it")


def remove(root: Path, ident: str) -> dict:
    links = {os.readlink(root / n) for n in ("current", "previous") if (root / n).is_symlink()}
    if f"bundles/{ident}" in links:
        return {"removed": False}
    shutil.rmtree(root / "bundles" / ident, ignore_errors=True)
    return {"removed": True}


def prune(root: Path, keep: int) -> dict:
    """Delete the oldest bundles beyond `keep`, never the current or previous one."""
    links = {Path(os.readlink(root / n)).name for n in ("current", "previous") if (root / n).is_symlink()}
    olds = sorted((p for p in (root / "bundles").glob("*") if p.is_dir() and not p.name.startswith(".")
                   and p.name not in links), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = [p.name for p in olds[max(keep - len(links), 0):]]
    for name in removed:
        shutil.rmtree(root / "bundles" / name)
    return {"removed": removed}


def provision(root: Path, station: str | None, key_name: str | None, key_pem: bytes) -> dict:
    from edge_infer.signing import load_public_key

    for sub in ("trusted-keys", "incoming", "bundles"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if station:
        (root / "station").write_text(station + "\n")
    if key_name:
        dest = root / "trusted-keys" / f"{key_name}.pub"
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(key_pem)
        load_public_key(tmp)  # refuses anything that is not an Ed25519 public key
        os.replace(tmp, dest)
    return state(root)


def _mentions(obj, text: str) -> bool:
    if isinstance(obj, str):
        return text in obj
    if isinstance(obj, dict):
        return any(_mentions(v, text) for v in obj.values())
    if isinstance(obj, list):
        return any(_mentions(v, text) for v in obj)
    return False


def wait_healthy(address: str, timeout: float, station: str | None = None, old_bundle: str | None = None,
                 curve: tuple[Path, Path] | None = None) -> dict:
    """Ask the control socket {"cmd": "health"} until it answers ok/ready (for this station) or time runs out.

    With ``old_bundle``, an answer whose bundle names that id (and is thus still the old service) does
    not count: a restart that did not happen must not pass for a healthy new version.
    With ``curve`` (the server's key file, this client's NAME.key_secret) the request goes over CurveZMQ.
    """
    import zmq

    deadline, last = time.monotonic() + timeout, "no answer"
    ctx = zmq.Context.instance()
    while True:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(1000 * min(1.0, max(deadline - time.monotonic(), 0.05))))
        if curve is not None:
            from edge_infer.security import secure_client

            secure_client(sock, *curve)
        try:
            sock.connect(address)
            sock.send_json({"cmd": "health"})
            answer = sock.recv_json()
            if (isinstance(answer, dict) and answer.get("ok") is True and answer.get("status") == "ready"
                    and (station is None or answer.get("station") == station)):
                if not (old_bundle and _mentions(answer.get("bundle"), old_bundle)):
                    return answer
                last = f"still the old bundle {old_bundle}: {json.dumps(answer)[:250]}"
            else:
                last = json.dumps(answer)[:300]
        except (zmq.ZMQError, ValueError) as exc:
            last = f"no answer ({exc})" if not isinstance(exc, zmq.Again) else "no answer"
        finally:
            sock.close()
        if time.monotonic() >= deadline:
            raise LinesideError(f"the service did not report healthy on {address} within {timeout:g} s "
                                f"(last: {last}); check `journalctl -u lineside@{station or 'STATION'}`")
        time.sleep(0.2)


def health_endpoint(args) -> tuple[str, tuple[Path, Path] | None]:
    """--address, else the running station's control socket; with CurveZMQ, the keys to speak it."""
    from .configfile import control_endpoint

    if args.root is None:
        return args.address, None
    address, server_key = control_endpoint(args.root / "current")
    if server_key is None:
        return args.address or address, None
    client_key = Path(args.client_key) if args.client_key else args.root / HEALTH_KEY
    if not client_key.is_file():
        raise LinesideError(f"the station's control socket uses CurveZMQ, and the health check's client key "
                            f"{client_key} does not exist: make it on the device with `lineside keys --out "
                            f"{client_key.parent} {client_key.name.removesuffix('.key_secret')}` and copy its "
                            "public .key into the station's curve.authorized_clients (docs/security.md)")
    return args.address or address, (server_key, client_key)


def last_verdict(root: Path) -> dict:
    """When the running station's journal last recorded a verdict (read-only; the service keeps writing)."""
    import sqlite3
    from datetime import datetime, timezone

    from .configfile import journal_path

    path = journal_path(root / "current")
    if not path.is_file():
        return {"journal": str(path), "last_verdict_at": None}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (latest,) = db.execute("SELECT MAX(decided_at) FROM verdicts WHERE station = ?",
                                   (read_station(root),)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LinesideError(f"cannot read the journal {path}: {exc}") from None
    when = datetime.fromtimestamp(latest, timezone.utc).isoformat(timespec="seconds") if latest else None
    return {"journal": str(path), "last_verdict_at": when}


def engine_mismatch(answer: dict, engine: dict | None) -> str | None:
    """Why a health answer shows the service not running ``engine`` (a built engine's sidecar), or None.

    One rule for every path that flashes (flash, the Ansible role, the Mender module): a device that
    built an engine and then silently falls back to a slower backend has failed its update.
    """
    bundle = answer.get("bundle") or {}
    if engine is None or (bundle.get("backend"), bundle.get("precision")) == (engine["backend"], engine["precision"]):
        return None
    return (f"the device built a {engine['precision']} engine for {engine['backend']}, but the service runs "
            f"backend {bundle.get('backend', '?')}, precision {bundle.get('precision', '?')}: it fell back (its log "
            "says why; check the station config's backend and precision, which `auto` lets follow the engine)")


def expect_built_engine(root: Path, answer: dict) -> dict:
    """The health answer, if the service runs the engine built for ROOT/current; LinesideError if not."""
    current = link_info(root, "current")
    built = engines(root, current["id"])["engines"] if current else []
    problem = engine_mismatch(answer, built[0] if built else None)
    if problem:
        raise LinesideError(problem)
    return answer


def engines(root: Path, ident: str) -> dict:
    """The engines built in bundles/<id>/engines (their sidecars), newest first: what the service should run."""
    from edge_infer.backends.engine_meta import built_engines

    keep = ("precision", "backend", "built", "onnx_sha256", "tensorrt_version", "gpu_name")
    return {"engines": [{k: m.get(k) for k in keep} for m in built_engines(root / "bundles" / ident)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy_jetson.device", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("state", "rollback", "last-verdict"):
        sub.add_parser(name).add_argument("root", type=Path)
    for name, extra in (("upload-state", ["name"]), ("upload-commit", ["name", "sha256"]),
                        ("upload-join", ["name", "sha256"]),
                        ("install", ["tar"]), ("switch", ["id"]), ("remove", ["id"]), ("engines", ["id"]),
                        ("restore", ["current", "previous"])):
        s = sub.add_parser(name)
        s.add_argument("root", type=Path)
        for arg in extra:
            s.add_argument(arg)
    sub.choices["install"].add_argument("--smoke", action="store_true")
    s = sub.add_parser("prune")
    s.add_argument("root", type=Path)
    s.add_argument("--keep", type=int, default=3)
    s = sub.add_parser("provision")
    s.add_argument("root", type=Path)
    s.add_argument("--station")
    s.add_argument("--key-name", help="install the Ed25519 public key read from stdin under this name")
    s = sub.add_parser("health")
    s.add_argument("--root", type=Path, help="ask the service of ROOT/current (address from its station config)")
    s.add_argument("--address", help="the control socket address (overrides the station config)")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--station")
    s.add_argument("--old-bundle", help="answers that still name this bundle id do not count")
    s.add_argument("--client-key", help=f"CurveZMQ: this check's NAME.key_secret (default: ROOT/{HEALTH_KEY})")
    s.add_argument("--expect-engine", action="store_true",
                   help="with --root: fail unless the service runs the engine built for ROOT/current")
    args = p.parse_args(argv)
    try:
        print(json.dumps(_dispatch(args)))
        return 0
    except LinesideError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _dispatch(args) -> dict:
    cmd = args.cmd
    if getattr(args, "id", None) is not None:
        _checked(args.id, BUNDLE_ID, "bundle id")
    for name in ("current", "previous"):
        if getattr(args, name, "-") != "-":
            _checked(getattr(args, name), BUNDLE_ID, "bundle id")
    for name in ("name", "tar"):
        if getattr(args, name, None) is not None:
            _checked(getattr(args, name), TAR_NAME, "bundle tar name")
    if getattr(args, "key_name", None) is not None:
        _checked(args.key_name, r"[A-Za-z0-9_.-]{1,64}", "key name")
    if cmd == "health":
        if not (args.address or args.root):
            raise LinesideError("health needs --root ROOT or --address ADDR")
        address, curve = health_endpoint(args)
        answer = wait_healthy(address, args.timeout, args.station, args.old_bundle, curve=curve)
        return expect_built_engine(args.root, answer) if args.expect_engine and args.root else answer
    root = args.root
    if cmd == "state":
        return state(root)
    if cmd == "last-verdict":
        return last_verdict(root)
    if cmd == "upload-state":
        return upload_state(root, args.name)
    if cmd == "upload-commit":
        return upload_commit(root, args.name, args.sha256)
    if cmd == "upload-join":
        return upload_join(root, args.name, args.sha256)
    if cmd == "install":
        return install(root, args.tar, args.smoke)
    if cmd == "engines":
        return engines(root, args.id)
    if cmd == "switch":
        old = link_info(root, "current")
        if old and old["id"] != args.id:
            set_link(root, "previous", old["id"])
        set_link(root, "current", args.id)
        return {"old": old and old["id"], "new": args.id}
    if cmd == "restore":  # put both links back exactly as they were before a failed switch
        set_link(root, "current", None if args.current == "-" else args.current)
        set_link(root, "previous", None if args.previous == "-" else args.previous)
        return state(root)
    if cmd == "rollback":
        cur, prev = link_info(root, "current"), link_info(root, "previous")
        if not prev or not prev["present"]:
            raise LinesideError(f"{root} has no previous bundle to roll back to")
        set_link(root, "current", prev["id"])
        set_link(root, "previous", cur and cur["id"])
        return {"old": cur and cur["id"], "new": prev["id"]}
    if cmd == "remove":
        return remove(root, args.id)
    if cmd == "prune":
        return prune(root, args.keep)
    if cmd == "provision":
        return provision(root, args.station, args.key_name, sys.stdin.buffer.read() if args.key_name else b"")
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())
