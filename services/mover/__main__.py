"""python -m mover"""

import asyncio

from common.settings import Settings
from mover.app import run

asyncio.run(run(Settings.from_env()))
