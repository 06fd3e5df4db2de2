"""python -m mover"""

import asyncio
import os

from common.grpc_core import EXPERIMENTS

os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)  # before gRPC starts (see common.grpc_core)

from common.settings import Settings
from mover.app import run

asyncio.run(run(Settings.from_env()))
