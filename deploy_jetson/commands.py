"""Handlers of the deploy commands (imported only when one runs)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from edge_infer.bundle import sha256_file
from edge_infer.errors import LinesideError
from edge_infer.signing import extract_bundle_tar, load_trusted_keys, verify_bundle

from .fleet import format_table, run_fleet
from .flash import BundleInfo, Device, Outcome, StepFailed, flash, label, rollback
from .pack import pack_bundle
from .targets import parse_overrides, resolve_targets


def bundle_main(args) -> int:
    if getattr(args, "mender", False) and not args.device_type:
        raise LinesideError("--mender needs --device-type, e.g. --device-type jetson-orin-nano")
    packed = pack_bundle(args.source, args.station, args.key, args.out)
    print(f"wrote {packed.path} ({packed.bytes} bytes, sha256 {packed.sha256[:16]}…)")
    print(f"bundle {packed.version}@{packed.id} for station {packed.station}, signed by key {packed.key_id}")
    if getattr(args, "mender", False):
        from .mender import write_artifact

        artifact = write_artifact(packed.path, packed.path.with_suffix(".mender"), args.device_type or [],
                                  packed.version, packed.id)
        print(f"wrote {artifact}: Mender Artifact, update module lineside-bundle, device type(s) "
              f"{', '.join(args.device_type)}")
    return 0


def inspect_bundle(path: str | Path, trust=None, station=None) -> dict:
    """Verify a bundle tar or folder on this host and describe it."""
    path = Path(path)
    trusted = load_trusted_keys(trust) if trust else None
    if path.is_dir():
        return verify_bundle(path, trusted, station).describe()
    if not path.is_file():
        raise LinesideError(f"{path} does not exist: give the tar from `lineside bundle` or a bundle folder")
    with tempfile.TemporaryDirectory(prefix="lineside-verify-") as tmp:
        return verify_bundle(extract_bundle_tar(path, Path(tmp) / "b"), trusted, station, incoming=True).describe()


def verify_main(args) -> int:
    info = inspect_bundle(args.bundle, args.trust, args.station)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    how = "a trusted key" if args.trust else "the key it carries (pass --trust to check who signed it)"
    print(f"OK  {args.bundle}: {info['model']} version {info['version']} (id {info['id']}) "
          f"for station {info['station'] or '-'}")
    print(f"    signed by key {info['key_id']}, signature checked against {how}; every sha256 matches")
    for name, f in info["files"].items():
        extra = f" {f['precision']}" if f["precision"] else ""
        print(f"    {name:24s} {f['role']}{extra:6s} {f['bytes']:>12d} B  {f['sha256'][:16]}…")
    return 0


def flash_main(args) -> int:
    if not Path(args.bundle).is_file():
        raise LinesideError(f"{args.bundle} is not a bundle tar: flash takes the signed tar that "
                            "`lineside bundle DIR --station CONFIG --key KEY --out BUNDLE.tar` writes")
    info = inspect_bundle(args.bundle)
    bundle = BundleInfo(Path(args.bundle), sha256_file(args.bundle), info["id"], info["version"], info["station"])
    if getattr(args, "engine", "ssh") == "ansible":
        return _flash_with_ansible(args, bundle)
    targets = resolve_targets(args.targets, parse_overrides(args.set))
    print(f"flashing {bundle.label} (station {bundle.station}) to {len(targets)} device(s)")
    outcomes = run_fleet(targets, lambda t, sh, pr: flash(t, sh, bundle, args.force, pr), args.parallel)
    print()
    print(format_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def _flash_with_ansible(args, bundle: BundleInfo) -> int:
    from .ansible_engine import run_playbook

    with tempfile.TemporaryDirectory(prefix="lineside-chunks-") as chunks:
        print(f"flashing {bundle.label} (station {bundle.station}) through Ansible, canary roll-out "
              f"(serial {args.serial}, max_fail_percentage {args.max_fail_percentage:g})")
        extravars = {"lineside_bundle": str(Path(args.bundle).resolve()), "lineside_chunks_dir": chunks,
                     "lineside_force": bool(args.force),
                     "lineside_bundle_info": {"id": bundle.id, "sha256": bundle.sha256, "version": bundle.version,
                                              "station": bundle.station}}
        outcomes = run_playbook("flash", args.targets, extravars, parse_overrides(args.set), args.parallel,
                                args.max_fail_percentage, _serial(args.serial), args.check)
    print()
    print(format_table(outcomes))
    return 0 if all(o.ok or o.result == "check" for o in outcomes) else 1


def _serial(text: str) -> list:
    """'1,10%,100%' → [1, '10%', '100%'] (Ansible's serial batches)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.endswith("%") and part[:-1].isdigit():
            out.append(part)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise LinesideError(f"--serial {text!r}: write batch sizes as counts or percentages, e.g. 1,10%,100%")
    return out


def rollback_main(args) -> int:
    if getattr(args, "engine", "ssh") == "ansible":
        from .ansible_engine import run_playbook

        outcomes = run_playbook("rollback", args.targets, {}, parse_overrides(args.set), args.parallel,
                                args.max_fail_percentage, _serial(args.serial), args.check)
        print()
        print(format_table(outcomes))
        return 0 if all(o.ok or o.result == "check" for o in outcomes) else 1
    targets = resolve_targets(args.targets, parse_overrides(args.set))
    outcomes = run_fleet(targets, rollback, args.parallel)
    print()
    print(format_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def provision_main(args) -> int:
    if getattr(args, "engine", "ssh") == "ansible":
        from .ansible_engine import run_playbook

        extravars = {"lineside_trust": [str(Path(k).resolve()) for k in _existing(args.trust or [])]}
        if args.station:
            extravars["lineside_station"] = args.station
        outcomes = run_playbook("provision", args.targets, extravars, parse_overrides(args.set))
        print()
        print(format_table(outcomes))
        return 0 if all(o.ok for o in outcomes) else 1
    targets = resolve_targets(args.targets, parse_overrides(args.set))
    keys = [(Path(k).name.split(".")[0], Path(k).read_bytes()) for k in _existing(args.trust or [])]

    def job(target, shell, progress) -> Outcome:
        out = Outcome(target.name)
        station = args.station or target.settings.station
        device = Device(target, shell, progress)
        try:
            st = device.call("provision", "provision", target.root, *(["--station", station] if station else []))
            for name, pem in keys:
                st = device.call("provision", "provision", target.root, "--key-name", name, input=pem)
            out.result = "ok"
            out.new = f"station {st['station']}, keys {', '.join(st['trusted_keys']) or 'none'}"
        except StepFailed as exc:
            out.message = f"{exc.step} failed: {exc.message}"
        return out

    outcomes = run_fleet(targets, job)
    return 0 if all(o.ok for o in outcomes) else 1


def _existing(paths: list[str]) -> list[str]:
    for p in paths:
        if not Path(p).is_file():
            raise LinesideError(f"{p} does not exist: give the NAME.sign.pub file from `lineside keys NAME --type signing`")
    return paths


def status_main(args) -> int:
    if getattr(args, "engine", "ssh") == "ansible":
        from .ansible_engine import run_playbook

        outcomes = run_playbook("status", args.targets, {"lineside_status_timeout": args.timeout},
                                parse_overrides(args.set), stream=sys.stderr)
        for o in outcomes:
            print(json.dumps({"device": o.device, "current": o.old, "previous": o.new, "result": o.result,
                              "message": o.message}) if args.json else
                  f"{o.device}: running {o.old} (previous {o.new}), {o.message or o.result}")
        return 0 if all(o.ok for o in outcomes) else 1
    targets = resolve_targets(args.targets, parse_overrides(args.set))
    reports = {}

    def job(target, shell, progress) -> Outcome:
        device = Device(target, shell)
        out = Outcome(target.name)
        try:
            st = device.state()
        except StepFailed as exc:
            out.message = f"unreachable or not provisioned: {exc.message}"
            reports[target.name] = {"device": target.name, "error": out.message}
            return out
        report = {"device": target.name, "station": st["station"], "current": st["current"],
                  "previous": st["previous"], "health": None, "last_verdict": None}
        try:
            answer = device.health(st["station"], timeout=args.timeout)
            report["health"], report["last_verdict"] = answer, _find_last_verdict(answer)
            out.result = "ok"
        except StepFailed as exc:
            report["health"] = {"ok": False, "error": exc.message}
        if report["last_verdict"] is None and st["current"]:
            try:  # the service's own journal knows, even when the service is down
                report["last_verdict"] = device.call("status", "last-verdict", target.root)["last_verdict_at"]
            except StepFailed as exc:
                report["last_verdict"] = f"unknown ({exc.message})"
        out.old, out.new = label(st["current"]), label(st["previous"])
        reports[target.name] = report
        return out

    outcomes = run_fleet(targets, job, stream=sys.stderr if args.json else None)
    for o in outcomes:
        r = reports[o.device]
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"{o.device}: {r['error']}")
        else:
            healthy = "healthy" if r["health"].get("ok") else f"NOT healthy ({r['health'].get('error')})"
            print(f"{o.device}: station {r['station']}, running {label(r['current'])} "
                  f"(previous {label(r['previous'])}), {healthy}, last verdict {r['last_verdict'] or 'unknown'}")
    return 0 if all(o.ok for o in outcomes) else 1


def _find_last_verdict(answer) -> str | None:
    """The service's last-verdict time, under whatever key holding `last_verdict` it reports it."""
    if isinstance(answer, dict):
        for key, value in answer.items():
            if "last_verdict" in key and isinstance(value, (str, int, float)):
                return str(value)
            found = _find_last_verdict(value)
            if found:
                return found
    return None
