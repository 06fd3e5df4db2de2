"""Fail early, with the fix, when the machine lacks redis-server (the tests start their own)."""

from __future__ import annotations

import shutil
import sys

if shutil.which("redis-server") is None:
    sys.exit("redis-server is not installed: run `sudo apt-get install -y redis-server` (or .ci/run)")
