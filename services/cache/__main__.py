"""python -m cache"""

import os

from common.grpc_core import EXPERIMENTS

os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)  # before gRPC starts (see common.grpc_core)

from cache.app import run
from common.service import run_loop
from common.settings import Settings

settings = Settings.from_env()
run_loop(run(settings), settings)
