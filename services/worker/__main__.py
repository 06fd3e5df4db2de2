"""python -m worker"""

import asyncio

from common.settings import Settings
from worker.app import run

asyncio.run(run(Settings.from_env()))
