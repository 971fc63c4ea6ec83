"""Flashing one device: a fixed sequence of steps that either goes live or leaves the old version running.

    state → copy (resumable) → install (unpack, verify signature/hashes/station, smoke-run)
          → build engine (or ONNX Runtime fallback) → switch `current` → restart → health
                                                       ↘ any failure from here: restore links, restart, health

The engine is built into the new bundle's ``engines/`` folder (derived data, outside the
signed content). When one was built, health must report the service running it: the
backend and precision of the newest engine there (the station's ``precision: auto``
follows it). A service that fell back to another backend or precision fails the health
check, and the flash rolls back, instead of passing with a line running on the CPU.

Nothing before the switch touches what runs, so a refused bundle or a failed build
leaves the service as it was. After the switch, a failure puts both links back and
restarts the old version, and the outcome says whether it came back healthy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_infer.errors import LinesideError

from .targets import Target
from .transport import Shell, quote


@dataclass
class BundleInfo:
    """What the host knows of the bundle tar it is flashing (from `lineside bundle`/`verify`)."""

    path: Path
    sha256: str
    id: str
    version: str
    station: str | None

    @property
    def label(self) -> str:
        return f"{self.version}@{self.id[:8]}"


@dataclass
class Outcome:
    device: str
    old: str = "-"
    new: str = "-"
    result: str = "failed"  # ok | unchanged | refused | failed | rolled back
    message: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "unchanged")


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message = step, message


class Refused(StepFailed):
    """The bundle is not for this device (station, signature, hashes): nothing was changed."""


def label(info: dict | None) -> str:
    if not info:
        return "-"
    return f"{info.get('version') or '?'}@{info['id'][:8]}"


class Device:
    """A device reached through a shell; every step is one `python -m deploy_jetson.device` call."""

    def __init__(self, target: Target, shell: Shell, progress=None):
        self.target, self.shell = target, shell
        self.progress = progress or (lambda text: None)

    def call(self, step: str, *args, input: bytes | None = None, timeout: float = 600) -> dict:
        res = self.shell.run(f"{self.target.python} -m deploy_jetson.device {quote(*args)}", input=input,
                             timeout=timeout)
        if res.rc != 0:
            raise StepFailed(step, _last_lines(res.err) or f"exit {res.rc}")
        try:
            return json.loads(res.out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(step, f"the device answered no JSON: {res.out[-300:]!r} {res.err[-300:]!r}") from None

    def sh(self, step: str, command: str, timeout: float = 600) -> str:
        res = self.shell.run(command, timeout=timeout)
        if res.rc != 0:
            raise StepFailed(step, f"`{command}` failed (exit {res.rc}): {_last_lines(res.err or res.out) or 'no output'}")
        return res.out

    def state(self) -> dict:
        return self.call("state", "state", self.target.root)

    def health(self, station: str | None, timeout: float | None = None, old_bundle: str | None = None) -> dict:
        s = self.target.settings
        args = ["health", "--root", self.target.root, "--timeout", timeout or s.health_timeout]
        args += ["--address", s.control] if s.control else []
        args += ["--station", station] if station else []
        args += ["--old-bundle", old_bundle] if old_bundle else []
        args += ["--client-key", s.health_key] if s.health_key else []
        return self.call("health", *args, timeout=(timeout or s.health_timeout) + 60)

    def restart(self, station: str) -> None:
        self.sh("restart", self.target.command(self.target.settings.restart, station=station))

    def copy(self, bundle: BundleInfo) -> None:
        """Copy the tar into ROOT/incoming, resuming a partial copy; the device checks its sha256."""
        root, name = self.target.root, f"{bundle.sha256}.tar"
        for attempt in (1, 2):
            have = self.call("copy", "upload-state", root, name)
            if not have["complete"]:
                offset, total = have["part_bytes"], bundle.path.stat().st_size
                if offset > total:  # longer than the bundle: not a prefix of it
                    offset = 0
                    self.sh("copy", f"rm -f {quote(f'{root}/incoming/{name}.part')}")
                self.progress(f"copy: resuming at {offset} of {total} bytes" if offset
                              else f"copy: {total} bytes")
                self.shell.push(bundle.path, f"cat >> {quote(f'{root}/incoming/{name}.part')}", offset,
                                self.target.settings.bandwidth(), _Percent(self.progress, total))
            try:
                self.call("copy", "upload-commit", root, name, bundle.sha256)
                return
            except StepFailed:
                if attempt == 2:
                    raise
                self.progress("copy: the copy on the device was damaged; copying afresh")


class _Percent:
    """Report copy progress at each quarter."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.next = progress, max(total, 1), 25

    def __call__(self, done: int) -> None:
        pct = 100 * done // self.total
        if pct >= self.next:
            self.progress(f"copy: {pct}%")
            self.next = (pct // 25 + 1) * 25


def flash(target: Target, shell: Shell, bundle: BundleInfo, force: bool = False, progress=None) -> Outcome:
    start = time.monotonic()
    out = Outcome(target.name, new=bundle.label)
    device = Device(target, shell, progress)
    try:
        _flash(device, bundle, force, out)
    except Refused as exc:
        out.result = "refused"
        out.message = exc.message if "running" in exc.message else f"{exc.message}; nothing was changed"
    except StepFailed as exc:
        out.message = out.message or f"{exc.step} failed: {exc.message}"
    except LinesideError as exc:
        out.message = str(exc)
    out.seconds = time.monotonic() - start
    return out


def _flash(device: Device, bundle: BundleInfo, force: bool, out: Outcome) -> None:
    target, say = device.target, device.progress
    say("reading the device's state")
    st = device.state()
    out.old = label(st["current"])
    station = _check_station(target, st, bundle)
    if st["current"] and st["current"]["id"] == bundle.id and not force:
        out.result, out.message = "unchanged", "this bundle is already current"
        return
    device.copy(bundle)
    say("installing: unpack, verify signature and hashes, smoke-run on ONNX Runtime")
    try:
        installed = device.call("install", "install", target.root, f"{bundle.sha256}.tar", "--smoke")
    except StepFailed as exc:
        raise Refused("install", f"the device refused the bundle: {exc.message}; {_still_running(st)}") from None
    new_dir = installed["path"]
    try:
        engine = _build_engine(device, new_dir, bundle.id, out)
    except StepFailed as exc:
        device.call("cleanup", "remove", target.root, bundle.id)
        out.message = f"{exc.step} failed: {exc.message}; {_still_running(st)}"
        return
    say("switching current → " + bundle.label)
    device.call("switch", "switch", target.root, bundle.id)
    try:
        say("restarting the service")
        device.restart(station)
        say("waiting for the health answer")
        answer = device.health(station, old_bundle=st["current"] and st["current"]["id"])
        running = _check_runs_engine(answer, engine)
    except StepFailed as exc:
        _roll_back(device, st, station, bundle, exc, out)
        return
    out.result, out.message = "ok", f"healthy: {answer.get('status')}, {running}"
    if not _mentions_id(answer.get("bundle"), bundle.id):
        out.warnings.append("the health answer does not name the bundle it runs, so the switch could not be "
                            "confirmed from it")
    try:
        device.call("prune", "prune", target.root, "--keep", target.settings.keep)
    except StepFailed as exc:  # the new version runs; old bundles left on disk are no reason to fail
        out.warnings.append(f"could not delete old bundles: {exc.message}")


def _check_station(target: Target, st: dict, bundle: BundleInfo) -> str:
    station = st["station"]
    if station is None:
        raise Refused("state", f"{target.root}/station is missing: provision the device first with "
                                  f"`lineside provision TARGET --station NAME --trust KEY.sign.pub`")
    if target.settings.station and target.settings.station != station:
        raise Refused("state", f"the inventory says station {target.settings.station!r} but the device is "
                                  f"provisioned as {station!r}: fix the inventory or re-provision the device")
    if bundle.station != station:
        raise Refused("state", f"the bundle is for station {bundle.station!r}, this device is {station!r}: "
                                  "flash the bundle packed with this station's config")
    return station


def _build_engine(device: Device, bundle_dir: str, bundle_id: str, out: Outcome) -> dict | None:
    """Build the engine on the device and return its sidecar; None (with a warning) where it has no TensorRT."""
    target, s = device.target, device.target.settings
    if device.shell.run(target.command(s.trt_check), timeout=120).rc != 0:
        warning = "TensorRT is not installed on the device: no engine built; the service runs ONNX Runtime"
        out.warnings.append(warning)
        device.progress("warning: " + warning)
        return None
    device.progress("building the TensorRT engine (and its parity check against ONNX Runtime)")
    device.sh("build", target.command(s.build, bundle=bundle_dir), timeout=s.build_timeout)
    built = device.call("build", "engines", target.root, bundle_id)["engines"]
    if not built:
        raise StepFailed("build", f"`{target.command(s.build, bundle=bundle_dir)}` succeeded but wrote no engine "
                         f"into {bundle_dir}/engines")
    engine = built[0]
    device.progress(f"built a {engine['precision']} engine for {engine['backend']}")
    return engine


def _check_runs_engine(answer: dict, engine: dict | None) -> str:
    """What the service runs, as health reports it; StepFailed if it is not the engine just built."""
    from .device_health import engine_mismatch

    bundle = answer.get("bundle") or {}
    problem = engine_mismatch(answer, engine)
    if problem:
        raise StepFailed("health", problem)
    return f"backend {bundle.get('backend', '?')}, precision {bundle.get('precision', '?')}"


def _roll_back(device: Device, st: dict, station: str, bundle: BundleInfo | None, exc: StepFailed, out: Outcome,
               leaving: str | None = None) -> None:
    target = device.target
    cur, prev = st["current"], st["previous"]
    device.progress(f"{exc.step} failed; rolling back to {label(cur)}")
    device.call("rollback", "restore", target.root, cur["id"] if cur else "-", prev["id"] if prev else "-")
    if bundle is not None:
        device.call("cleanup", "remove", target.root, bundle.id)
    why = f"{exc.step} failed: {exc.message}"
    if not cur:
        out.result, out.message = "failed", f"{why}; there was no previous version, so nothing runs now"
        return
    try:
        device.restart(station)
        device.health(station, old_bundle=leaving or (bundle and bundle.id))
        out.result, out.message = "rolled back", f"{why}; previous {label(cur)} restored and healthy"
    except StepFailed as again:
        out.result = "failed"
        out.message = f"{why}; restored {label(cur)} but it is not healthy either: {again.message}"


def _mentions_id(obj, ident: str) -> bool:
    return ident in json.dumps(obj) if obj is not None else False


def _still_running(st: dict) -> str:
    cur = st["current"]
    return f"previous {label(cur)} still running" if cur else "nothing was running before"


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())


def rollback(target: Target, shell: Shell, progress=None) -> Outcome:
    """Swap current and previous, restart, wait for health; if the old version fails too, swap back."""
    start = time.monotonic()
    device = Device(target, shell, progress)
    out = Outcome(target.name)
    try:
        st = device.state()
        out.old, out.new = label(st["current"]), label(st["previous"])
        device.call("rollback", "rollback", target.root)
        try:
            device.restart(st["station"])
            device.health(st["station"], old_bundle=st["current"] and st["current"]["id"])
            out.result, out.message = "ok", "rolled back and healthy"
        except StepFailed as exc:
            device.progress(f"{exc.step} failed after the rollback; returning to {out.old}")
            _roll_back(device, st, st["station"], None, exc, out, leaving=st["previous"]["id"])
            out.result = "failed"
    except StepFailed as exc:
        out.message = f"{exc.step} failed: {exc.message}"
    out.seconds = time.monotonic() - start
    return out
