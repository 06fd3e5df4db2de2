"""Start, watch and stop child processes the way `make run` and the tests need them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until `host:port` accepts connections; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Managed:
    """One child process with its name, port and log file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 20.0) -> Managed:
        """Launch the process (its own session, output to its log) and wait for its port."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        if wait:
            wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        return self

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the process."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for a clean exit, SIGKILL after `timeout`."""
        self.signal(signal.SIGTERM)
        return self.reap(timeout)

    def reap(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the process to exit (after a signal), then SIGKILL it."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        """Last lines of the process's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start_all(procs: Sequence[Managed], timeout: float = 20.0) -> None:
    """Launch every process at once, then wait for each one's port: they start side by side."""
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        wait_for_port("127.0.0.1", proc.port, timeout, proc.proc)


def stop_all(procs: Sequence[Managed], timeout: float = 15.0) -> None:
    """SIGTERM every process at once, then wait for each (SIGKILL once `timeout` has passed)."""
    running = [proc for proc in procs if proc.alive]
    for proc in running:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        proc.reap(max(0.0, deadline - time.monotonic()))


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args…` with this interpreter."""
    return [sys.executable, "-m", module, *args]
