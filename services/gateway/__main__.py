"""python -m gateway"""

import asyncio

from common.settings import Settings
from gateway.app import run

asyncio.run(run(Settings.from_env()))
