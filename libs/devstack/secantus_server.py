"""Launch SecantusDB with a chosen TTL sweep interval; prints `READY <host> <port>`.

The `secantusd-py` daemon ignores `ttl_sweep_seconds` and auto-loads any
./secantusd.toml, hence this launcher, which starts the server class itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading

from secantus import SecantusDBServer


def main() -> int:
    """Start the server and wait for SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--ttl-sweep-seconds", type=float, default=60.0)
    parser.add_argument("--log-level", default="WARNING")
    opts = parser.parse_args()
    logging.basicConfig(level=opts.log_level)
    server = SecantusDBServer(
        host=opts.host,
        port=opts.port,
        storage_path=opts.storage_path,
        ttl_sweep_seconds=opts.ttl_sweep_seconds,
        enable_test_commands=False,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server.start()
    host, port = server.address
    print(f"READY {host} {port}", flush=True)
    done.wait()
    _wake_accept(server)
    server.stop()
    return 0


def _wake_accept(server: SecantusDBServer) -> None:
    """Shut the listening socket down so the blocked accept() returns now.

    stop() only closes the socket, which does not wake a thread blocked in accept() on Linux: it
    then waits out its 2 s join of the accept thread. A shutdown makes accept() fail at once, and
    the accept loop ends on that error (the store is still checkpointed and closed cleanly).
    """
    listening = getattr(server, "_socket", None)
    if isinstance(listening, socket.socket):
        with contextlib.suppress(OSError):  # already closed: nothing is blocked on it
            listening.shutdown(socket.SHUT_RDWR)


if __name__ == "__main__":
    sys.exit(main())
