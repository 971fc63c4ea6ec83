"""Running commands on a device and streaming a file to it: a local shell, or OpenSSH.

SSH goes through the system's OpenSSH client (`ssh`), not paramiko/asyncssh: a line
engineer's ~/.ssh/config, agent, known_hosts, ProxyJump bastions and hardware keys then
just work, and nothing more is installed on the host. One multiplexed connection
(ControlMaster) carries all of a flash's commands, so each step costs a round trip, not
a handshake. Copies stream into `cat >> FILE.part` on the device, starting from the bytes
already there, so an interrupted copy resumes; the device checks the sha256 at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from edge_infer.errors import LinesideError

from .targets import Target

CHUNK = 1 << 16
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Shell(ABC):
    """A device's shell: `run` a command line, `push` a file's tail into a command's stdin."""

    def __init__(self, target: Target):
        self.target = target

    @abstractmethod
    def argv(self, command: str) -> list[str]:
        """The argument vector that runs ``command`` on the device."""

    def env(self) -> dict | None:
        return None

    def run(self, command: str, input: bytes | None = None, timeout: float = 600) -> Result:
        try:
            proc = subprocess.run(self.argv(command), input=input, capture_output=True, timeout=timeout,
                                  env=self.env())
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:g} s: {command}")
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def push(self, path: Path, command: str, offset: int, bwlimit: float | None = None, progress=None) -> int:
        """Send path's bytes from offset into command's stdin; return how many were sent."""
        proc = subprocess.Popen(self.argv(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=self.env())
        sent, start = 0, time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                for block in iter(lambda: f.read(CHUNK), b""):
                    proc.stdin.write(block)
                    sent += len(block)
                    if bwlimit:  # sleep off any lead over the allowed rate
                        time.sleep(max(0.0, sent / bwlimit - (time.monotonic() - start)))
                    if progress:
                        progress(offset + sent)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the device side ended early; its stderr and exit code below say why
        finally:
            if proc.poll() is None and proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise LinesideError(f"copy to {self.target.name} broke off after {offset + sent} bytes: "
                                f"{err.strip() or 'exit ' + str(proc.returncode)}; flash again to resume")
        return sent

    def close(self) -> None:
        """Release what it holds; the default holds nothing."""


class LocalShell(Shell):
    """A folder on this machine standing in for a device; runs this host's own lineside."""

    def argv(self, command: str) -> list[str]:
        return ["/bin/sh", "-c", command]

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        return env


class SshShell(Shell):
    def __init__(self, target: Target):
        super().__init__(target)
        # The control socket's path must stay short (unix sockets allow ~100 bytes).
        self._dir = tempfile.mkdtemp(prefix="ls-ssh-")
        s = target.settings
        self._options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
                         "-o", "ServerAliveCountMax=3", "-o", "ControlMaster=auto",
                         "-o", f"ControlPath={self._dir}/%C", "-o", "ControlPersist=15"]
        if target.port:
            self._options += ["-p", str(target.port)]
        if s.identity:
            self._options += ["-i", str(Path(s.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        for option in s.ssh_options:
            self._options += ["-o", option]
        self._dest = f"{target.user}@{target.host}" if target.user else target.host

    def argv(self, command: str) -> list[str]:
        return ["ssh", *self._options, self._dest, command]

    def close(self) -> None:
        try:  # end the shared connection; ControlPersist would otherwise keep it a while
            subprocess.run(["ssh", *self._options, "-O", "exit", self._dest], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)


def open_shell(target: Target) -> Shell:
    return LocalShell(target) if target.kind == "local" else SshShell(target)


def quote(*words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)
