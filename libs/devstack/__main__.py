"""`python -m devstack run`: the whole suite on this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from devstack.seed import DEMO_USER
from devstack.stack import Ports, ProcessStack, port_in_use

ROOT = Path(__file__).resolve().parents[2]

BANNER = """
FlickrHub is running (data in {data}, logs in {data}/logs).

  REST   http://127.0.0.1:{edge}      gRPC  127.0.0.1:{gateway}      Flickr sandbox  http://127.0.0.1:{sandbox}
  Metrics: gateway :{m_gateway}  mover :{m_mover}  worker :{m_worker}  cache :{m_cache}  edge :{m_edge}

API keys (new on every start; shown only here):
  client (acts for {user})  {client_key}
  admin                     {admin_key}
  client signing secret     {client_signing}   (HMAC-signed requests: docs/auth.md)

Submit a Flickr call over REST and poll it:

  export FLICKRHUB_API_KEY={client_key}
  curl -s -X POST http://127.0.0.1:{edge}/v1/jobs -H "Authorization: Bearer $FLICKRHUB_API_KEY" \\
       -H 'Content-Type: application/json' \\
       -d '{{"user_id": "{user}", "method": "flickr.test.echo", "params": {{"hello": "world"}}}}'
  curl -s -H "Authorization: Bearer $FLICKRHUB_API_KEY" http://127.0.0.1:{edge}/v1/jobs/<job_id>

Or over gRPC (in this virtualenv: .venv/bin/python):

  import grpc
  from google.protobuf.json_format import MessageToDict
  from flickrhub.v1 import jobs_pb2, jobs_pb2_grpc
  stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel("127.0.0.1:{gateway}"))
  key = [("authorization", "Bearer {client_key}")]
  job = stub.SubmitJob(jobs_pb2.SubmitJobRequest(user_id="{user}", method="flickr.photos.search",
                                                 params={{"text": "sunset"}}), metadata=key)
  for update in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id), metadata=key):
      print(jobs_pb2.JobState.Name(update.state), MessageToDict(update.result))

Press Ctrl-C to stop everything.
"""


def run(workers: int, movers: int, data: Path) -> int:
    """Start the stack, print how to use it, wait for Ctrl-C, stop it."""
    ports = Ports.defaults()
    busy = [
        p
        for p in (ports.redis, ports.cache_redis, ports.mongo, ports.sandbox, ports.gateway, ports.edge)
        if port_in_use(p)
    ]
    if busy:
        print(
            f"ports already in use: {busy} — is another `make run` running? (set the *_PORT/_URL variables)",
            file=sys.stderr,
        )
        return 1
    stack = ProcessStack(data, ports, workers=workers, movers=movers)
    replicas = {"mover": movers, "worker": workers}
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        stack.start()
        print(
            BANNER.format(
                data=data,
                edge=ports.edge,
                gateway=ports.gateway,
                sandbox=ports.sandbox,
                user=DEMO_USER,
                client_key=stack.keys.client_key if stack.keys else "",
                admin_key=stack.keys.admin_key if stack.keys else "",
                client_signing=stack.keys.client_signing_secret if stack.keys else "",
                **{f"m_{k}": _replica_ports(v, replicas.get(k, 1)) for k, v in ports.metrics.items()},
            ),
            flush=True,
        )
        while not stopping:
            dead = [p.name for p in stack.procs.values() if not p.alive]
            if dead:
                print(f"stopped unexpectedly: {dead}; see {data}/logs", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        print("stopping FlickrHub…", flush=True)
        stack.stop()
        print("stopped.", flush=True)


def _replica_ports(first: int, replicas: int) -> str:
    """`9120` or `9120-9121`: replica i of a service serves metrics on its port + i."""
    return str(first) if replicas <= 1 or first <= 0 else f"{first}-{first + replicas - 1}"


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="start the whole suite until Ctrl-C")
    run_cmd.add_argument("--workers", type=int, default=2)
    run_cmd.add_argument("--movers", type=int, default=1)
    run_cmd.add_argument("--data", type=Path, default=ROOT / ".data")
    opts = parser.parse_args()
    return run(opts.workers, opts.movers, opts.data)


if __name__ == "__main__":
    sys.exit(main())
