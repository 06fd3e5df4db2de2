"""`python -m edge`: serve the REST edge with settings from the environment."""

from __future__ import annotations

import asyncio

from common.service import bootstrap
from common.settings import Settings
from edge import app


def main() -> None:
    """Read settings, set up logging and tracing, and run the edge until SIGTERM."""
    settings = Settings.from_env()
    bootstrap("edge", settings)
    asyncio.run(app.run(settings))


if __name__ == "__main__":
    main()
