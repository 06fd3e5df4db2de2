"""python -m cache"""

import asyncio

from cache.app import run
from common.settings import Settings

asyncio.run(run(Settings.from_env()))
