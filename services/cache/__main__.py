"""python -m cache"""

import asyncio
import os

from common.grpc_core import EXPERIMENTS

os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)  # before gRPC starts (see common.grpc_core)

from cache.app import run
from common.settings import Settings

asyncio.run(run(Settings.from_env()))
