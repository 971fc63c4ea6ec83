"""`lineside flash|rollback --engine ansible`: the same roll-out through Ansible, driven by ansible-runner.

The playbooks and the `lineside` role live in ``deploy_jetson/ansible/``; every step they
run on a device is one of the `python -m deploy_jetson.device` commands `lineside flash`
runs over its own SSH loop, so verify, switch and rollback have one implementation.
Ansible adds what a fleet needs: its inventories, a canary roll-out (``serial: [1, "10%",
"100%"]``) that stops when more than ``max_fail_percentage`` of a batch fails, and its
connection plugins. A lineside inventory (fleet.toml/.yaml) becomes an Ansible inventory
here, host by host; an Ansible inventory (INI, YAML with ``all:``, or a folder) is used as is.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path

from edge_infer.errors import LinesideError

from .flash import Outcome
from .targets import Target, resolve_targets
from .transport import PACKAGE_PARENT

PLAYBOOKS = Path(__file__).with_name("ansible")
OUTCOME_TASK = "lineside outcome"
QUIET_ACTIONS = ("set_fact", "include_tasks", "debug", "assert", "fail")  # bookkeeping, not steps


def is_ansible_inventory(texts: list[str]) -> bool:
    """One path that Ansible, not lineside, reads: INI, a folder, or YAML whose top level is `all:`."""
    if len(texts) != 1 or texts[0].startswith(("ssh://", "local:")):
        return False
    path = Path(texts[0])
    if path.is_dir() or path.suffix in (".ini", ".cfg", ""):
        return path.exists()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        return isinstance(data, dict) and "all" in data and "devices" not in data
    return False


def host_vars(target: Target) -> dict:
    """A lineside target's settings as the role's variables and Ansible's connection variables."""
    s = target.settings
    python = s.python or (f"env PYTHONPATH={shlex.quote(PACKAGE_PARENT)} {shlex.quote(sys.executable)}"
                          if target.kind == "local" else "python3")
    # {station} is the device's own, known once its state is read; {bundle} is the new bundle's folder,
    # which the role passes to the build in $LINESIDE_BUNDLE.
    placeholders = {"python": python, "station": "{{ lineside_device_station }}", "bundle": '"$LINESIDE_BUNDLE"'}
    v = {"lineside_root": target.root, "lineside_python": python, "lineside_station": s.station or "",
         "lineside_restart": _command(target, s.restart, placeholders),
         "lineside_build": _command(target, s.build, placeholders),
         "lineside_trt_check": _command(target, s.trt_check, placeholders),
         "lineside_control": s.control or "", "lineside_health_timeout": s.health_timeout,
         "lineside_build_timeout": int(s.build_timeout), "lineside_keep": s.keep}
    if target.kind == "local":
        v.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
        return v
    # Ansible's modules run on the device's lineside Python (the interpreter in `python`, after any `env ...`):
    # the one Python known to be there, rather than what interpreter discovery happens to find.
    v.update(ansible_host=target.host, ansible_python_interpreter=shlex.split(python)[-1])
    if target.port:
        v["ansible_port"] = target.port
    if target.user:
        v["ansible_user"] = target.user
    if s.identity:
        v["ansible_ssh_private_key_file"] = str(Path(s.identity).expanduser())
    if s.ssh_options:
        v["ansible_ssh_common_args"] = " ".join(f"-o {shlex.quote(o)}" for o in s.ssh_options)
    return v


def _command(target: Target, template: str, placeholders: dict) -> str:
    return target.command(template, **placeholders)


def inventory_for(targets: list[Target]) -> dict:
    return {"all": {"hosts": {t.name: host_vars(t) for t in targets}}}


class Progress:
    """ansible-runner's events as `lineside flash` progress lines, and each host's outcome."""

    def __init__(self, hosts: list[str], stream=None):
        self.stream = stream or sys.stdout
        self.width = max([len(h) for h in hosts] + [8])
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.outcomes: dict[str, dict] = {}
        self.failures: dict[str, str] = {}

    def __call__(self, event: dict) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        host, task = data.get("host"), data.get("task") or ""
        if kind == "runner_item_on_ok" and host and data.get("task_action", "").endswith("copy"):
            res = data.get("res") or {}
            item = res.get("_ansible_item_label") or res.get("item") or "?"
            self.say(host, f"copy: {item} {'copied' if res.get('changed') else 'already there, skipped'}")
            return True
        if not host or kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            return True
        now = time.monotonic()
        self.first.setdefault(host, now)
        self.last[host] = now
        res = data.get("res") or {}
        if task == OUTCOME_TASK and kind == "runner_on_ok":
            self.outcomes[host] = res.get("msg") or {}
            return True
        if kind == "runner_on_ok":
            if data.get("task_action", "").rsplit(".", 1)[-1] not in QUIET_ACTIONS:
                self.say(host, f"{task}: {'changed' if res.get('changed') else 'ok'}")
        elif not data.get("ignore_errors"):
            why = (res.get("stderr") or res.get("msg") or "").strip().splitlines()
            self.failures[host] = f"{task} failed: {why[-1] if why else kind}"
            self.say(host, f"{task}: {'UNREACHABLE' if kind == 'runner_on_unreachable' else 'FAILED'}")
        return True

    def say(self, host: str, text: str) -> None:
        elapsed = self.last.get(host, 0) - self.first.get(host, 0)
        print(f"[{host:<{self.width}}] {elapsed:6.1f}s  {text}", file=self.stream, flush=True)

    def outcome(self, host: str, not_reached: str) -> Outcome:
        seconds = self.last.get(host, 0.0) - self.first.get(host, 0.0)
        o = self.outcomes.get(host)
        if o:
            return Outcome(host, o.get("old") or "-", o.get("new") or "-", o.get("result") or "failed",
                           o.get("message") or "", seconds, list(o.get("warnings") or []))
        if host in self.failures:
            return Outcome(host, result="failed", message=self.failures[host], seconds=seconds)
        return Outcome(host, result="skipped", message=not_reached)


def run_playbook(action: str, targets_text: list[str], extravars: dict, overrides: dict | None = None,
                 parallel: int = 4, max_fail_percentage: float = 0, serial: list | None = None,
                 check: bool = False, stream=None) -> list[Outcome]:
    """Run deploy_jetson/ansible/ACTION.yml on the targets; one Outcome per host, in inventory order."""
    try:
        import ansible_runner
    except ImportError:
        raise LinesideError("--engine ansible needs ansible-runner and ansible-core on this host: "
                            "pip install 'lineside[fleet]'") from None
    if is_ansible_inventory(targets_text):
        inventory, hosts = str(Path(targets_text[0]).resolve()), _inventory_hosts(targets_text[0])
    else:
        targets = resolve_targets(targets_text, overrides)
        if any(t.settings.bwlimit for t in targets):
            print("note: bwlimit is not applied by --engine ansible (Ansible's copy has no rate limit)")
        inventory, hosts = inventory_for(targets), [t.name for t in targets]
    extravars = {**extravars, "lineside_max_fail_percentage": max_fail_percentage}
    if serial is not None:
        extravars["lineside_serial"] = serial
    progress = Progress(hosts, stream)
    bin_dir = str(Path(sys.executable).parent)  # ansible-playbook beside this interpreter (a venv)
    with tempfile.TemporaryDirectory(prefix="lineside-ansible-") as private:
        import os

        result = ansible_runner.run(
            private_data_dir=private, project_dir=str(PLAYBOOKS), playbook=f"{action}.yml",
            inventory=inventory, extravars=extravars, event_handler=progress, quiet=True, forks=parallel,
            cmdline="--check" if check else None,
            envvars={"ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"), "ANSIBLE_NOCOLOR": "1",
                     "ANSIBLE_PIPELINING": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                     "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])})
        if result.status not in ("successful", "failed") and not progress.first:
            raise LinesideError(f"ansible-runner could not run {action}.yml ({result.status}): "
                                f"{_tail(result)}")
    stopped = (f"not reached: the roll-out stopped before this device (more than "
               f"{max_fail_percentage:g}% of a batch failed)")
    return [progress.outcome(h, stopped) for h in hosts]


def _tail(result) -> str:
    try:
        return " | ".join(result.stdout.read().strip().splitlines()[-5:])
    except (OSError, AttributeError):
        return "no output"


def _inventory_hosts(path: str) -> list[str]:
    """The hosts of an Ansible inventory, in its order (for the table, reached or not)."""
    import json

    from ansible_runner.interface import get_inventory

    out, err = get_inventory("list", [str(Path(path).resolve())], quiet=True)
    try:
        data = json.loads(out) if isinstance(out, str) else out
    except ValueError:
        raise LinesideError(f"ansible-inventory cannot read {path}: {err or out}") from None
    return list((data.get("_meta") or {}).get("hostvars") or {})
