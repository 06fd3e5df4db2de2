"""Redis (queue and cache roles) and SecantusDB (MongoDB wire) for local runs and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from devstack.procs import Managed, free_port, python_module


def redis_server(role: str, data_dir: Path, port: int | None = None, maxmemory: str = "64mb") -> Managed:
    """A redis-server in the queue role (noeviction, AOF everysec + RDB) or the cache role (allkeys-lru)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", ""]
    if role == "queue":
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        argv += ["--save", "900 1 300 100"]
    elif role == "cache":
        argv += ["--appendonly", "no", "--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru"]
    else:
        raise ValueError(f"unknown redis role {role!r}")
    return Managed(f"redis-{role}", argv, port, data_dir / f"redis-{role}.log")


def secantus(data_dir: Path, port: int | None = None, ttl_sweep_s: float = 60.0) -> Managed:
    """SecantusDB on `port` with its store under `data_dir`."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = python_module(
        "devstack.secantus_server",
        "--port",
        str(port),
        "--storage-path",
        str(data_dir / "secantus"),
        "--ttl-sweep-seconds",
        str(ttl_sweep_s),
    )
    return Managed("secantus", argv, port, data_dir / "secantus.log")


def mongo_url(port: int) -> str:
    """URI for SecantusDB (retryWrites=false avoids its retryable-write slowdown)."""
    return (
        f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false&serverSelectionTimeoutMS=5000"
    )
