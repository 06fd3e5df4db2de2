"""`python -m sandbox --host 127.0.0.1 --port 8765 [--seed-demo]`: serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio

from sandbox.app import SandboxSettings, run


def parse_args(argv: list[str] | None = None) -> SandboxSettings:
    """The settings given on the command line."""
    defaults = SandboxSettings()
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Local Flickr REST API sandbox.")
    parser.add_argument("--host", default=defaults.host, help="interface to listen on")
    parser.add_argument("--port", type=int, default=defaults.port, help="TCP port (0: any free port)")
    parser.add_argument("--seed-demo", action="store_true", help="seed the fixed demo app and token")
    parser.add_argument("--log-level", default=defaults.log_level, help="Python log level")
    args = parser.parse_args(argv)
    return SandboxSettings(args.host, args.port, args.seed_demo, args.log_level)


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
