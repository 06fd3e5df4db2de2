"""`make setup` installs redis-server where it is missing and allowed, else names the one command to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import ensure_redis
from scripts.ensure_redis import APT, USER_COMMAND, Decision, Machine, decide

SCRIPT = Path(ensure_redis.__file__)


@pytest.mark.parametrize("is_root", [True, False])
@pytest.mark.parametrize("sudo", [True, False])
@pytest.mark.parametrize("apt", [True, False])
def test_nothing_is_done_where_redis_server_is_installed(is_root: bool, sudo: bool, apt: bool) -> None:
    assert decide(Machine(has_redis=True, has_apt=apt, is_root=is_root, passwordless_sudo=sudo)) == Decision()


@pytest.mark.parametrize("sudo", [True, False])
def test_root_installs_it_with_apt_get_directly(sudo: bool) -> None:
    decision = decide(Machine(has_redis=False, has_apt=True, is_root=True, passwordless_sudo=sudo))
    assert decision == Decision(
        commands=(("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", "redis-server"))
    )


def test_a_user_with_sudo_without_a_password_installs_it_through_sudo_without_a_prompt() -> None:
    decision = decide(Machine(has_redis=False, has_apt=True, is_root=False, passwordless_sudo=True))
    sudo = ("sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive")
    assert decision == Decision(commands=((*sudo, *APT[0]), (*sudo, *APT[1])))
    assert not decision.stop


def test_a_user_who_may_not_install_is_told_the_one_command_to_run() -> None:
    decision = decide(Machine(has_redis=False, has_apt=True, is_root=False, passwordless_sudo=False))
    assert decision.commands == ()
    assert USER_COMMAND == "sudo apt-get install -y redis-server"
    assert f"\n    {USER_COMMAND}\n" in decision.stop


@pytest.mark.parametrize("is_root", [True, False])
def test_without_apt_get_nothing_is_run_and_set_up_stops(is_root: bool) -> None:
    decision = decide(Machine(has_redis=False, has_apt=False, is_root=is_root, passwordless_sudo=True))
    assert decision.commands == ()
    assert "no apt-get" in decision.stop and "brew install redis" in decision.stop


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    """The script as `make setup` runs it, with only `path` on PATH."""
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env={"PATH": str(path)}, capture_output=True, text=True, timeout=60
    )


def test_the_script_stops_non_zero_on_a_machine_without_redis_server_or_apt_get(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 1
    assert "no apt-get" in done.stderr


def test_the_script_succeeds_quietly_where_redis_server_is_on_path(tmp_path: Path) -> None:
    server = tmp_path / "redis-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    done = _run(tmp_path)
    assert (done.returncode, done.stderr) == (0, "")


def test_the_script_runs_apt_get_as_root_and_finds_the_server_it_installed(tmp_path: Path) -> None:
    # A stand-in apt-get (the real one would change this machine) that logs its arguments and,
    # on install, puts a redis-server next to itself.
    log = tmp_path / "apt.log"
    apt = tmp_path / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$DEBIAN_FRONTEND $*" >> {log}\n'
        f'if [ "$1" = install ]; then echo "#!/bin/sh" > {tmp_path}/redis-server; '
        f"/bin/chmod 755 {tmp_path}/redis-server; fi\n"
    )
    apt.chmod(0o755)
    done = _run(tmp_path)
    if os.geteuid() == 0:
        assert done.returncode == 0, done.stderr
        assert log.read_text().splitlines() == [
            "noninteractive update -qq",
            "noninteractive install -y -qq redis-server",
        ]
        assert (tmp_path / "redis-server").exists()
    else:  # no sudo on this PATH: the user is told what to run, nothing is run
        assert done.returncode == 1
        assert USER_COMMAND in done.stderr
        assert not log.exists()
