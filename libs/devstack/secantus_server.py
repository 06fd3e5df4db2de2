"""Launch SecantusDB with a chosen TTL sweep interval; prints `READY <host> <port>`.

The `secantusd-py` daemon ignores `ttl_sweep_seconds` and auto-loads any
./secantusd.toml, hence this launcher, which starts the server class itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
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
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
