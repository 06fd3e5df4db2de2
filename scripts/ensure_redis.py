"""Install redis-server where it is missing (`make setup` runs this; the stacks and tests start their own).

Present: nothing to do. Missing: installed with apt-get where this user may (root, or sudo without
a password), so `make run` and `make test` are the whole set-up on a fresh Debian or Ubuntu
machine. Otherwise it stops with the one command to run. Debian's package may also start a system
instance on 6379; FlickrHub never uses it (its own servers run on other ports).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

PACKAGE = "redis-server"
USER_COMMAND = f"sudo apt-get install -y {PACKAGE}"
APT = (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", PACKAGE))
# sudo resets the environment; `env` sets the variable for apt-get itself (no debconf prompts).
SUDO = ("sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive")


@dataclass(frozen=True)
class Machine:
    """What decides how redis-server gets installed."""

    has_redis: bool
    has_apt: bool
    is_root: bool
    # `sudo -n true` succeeds: sudo without a password (or with one typed a moment ago)
    passwordless_sudo: bool


@dataclass(frozen=True)
class Decision:
    """Commands to run (none: nothing to do), or why set-up stops and what the user runs instead."""

    commands: tuple[tuple[str, ...], ...] = ()
    stop: str = ""


def decide(machine: Machine) -> Decision:
    """Install redis-server with apt-get when missing and allowed; else stop with the command to run."""
    if machine.has_redis:
        return Decision()
    if not machine.has_apt:
        return Decision(
            stop=f"{PACKAGE} is not installed and there is no apt-get here to install it: install Redis 7 "
            "with this system's package manager (macOS: `brew install redis`), then run make again."
        )
    if machine.is_root:
        return Decision(commands=APT)
    if machine.passwordless_sudo:
        return Decision(commands=tuple((*SUDO, *command) for command in APT))
    return Decision(
        stop=f"{PACKAGE} is not installed and this user may not install it (not root, no sudo without "
        f"a password). Run:\n\n    {USER_COMMAND}\n\nthen run make again."
    )


def probe() -> Machine:
    """This machine (sudo is only asked when it matters: redis-server missing, not root)."""
    has_redis = shutil.which(PACKAGE) is not None
    is_root = os.geteuid() == 0
    sudo = False
    if not has_redis and not is_root and shutil.which("sudo") is not None:
        try:
            sudo = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            sudo = False
    return Machine(has_redis, shutil.which("apt-get") is not None, is_root, sudo)


def main() -> int:
    decision = decide(probe())
    if decision.stop:
        print(decision.stop, file=sys.stderr)
        return 1
    if not decision.commands:
        return 0
    print(f"{PACKAGE} is missing: installing it", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in decision.commands:
        print(f"+ {shlex.join(command)}", file=sys.stderr)
        if (code := subprocess.run(command, env=env).returncode) != 0:
            print(
                f"`{shlex.join(command)}` failed (exit {code}). Run:\n\n    {USER_COMMAND}\n", file=sys.stderr
            )
            return 1
    if shutil.which(PACKAGE) is None:
        print(f"{PACKAGE} was installed but is not on PATH ({os.environ.get('PATH', '')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
