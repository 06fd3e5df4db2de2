"""python -m worker"""

import os

from common.grpc_core import EXPERIMENTS

os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)  # before gRPC starts (see common.grpc_core)

from common.service import run_loop
from common.settings import Settings
from worker.app import run

settings = Settings.from_env()
run_loop(run(settings), settings)
