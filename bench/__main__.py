"""`make bench`: issue 9's measurements in one command, each against a baseline of the same run.

Parts (each on a stack of its own, started on free ports in a temporary folder):

* cost      — CPU per job of every process and store, MongoDB and Redis operations per job,
              RSS, the stand-in's write capacity (bench.cost, bench.storecap);
* ingress   — gRPC and REST submit throughput/latency at c=50/200 and open loop, against bare
              grpc.aio and aiohttp servers; CPU per request (bench.ingress);
* baselines — arq (own venv) and a bare redis-py Streams pipeline (bench.baselines);
* fairness  — a small token's jobs alone and while another token floods (bench.flood).

Prints one PASS/FAIL line per target (bench.targets), writes latest.json and latest.md to the
output folder (bench/results by default) and appends the run to history.jsonl. `--smoke`
runs every part with tiny numbers into a temporary folder (never bench/results) and checks
that the files were written: it tests the bench, not the targets. `--profile` records a py-spy
flame graph of each service during the cost run into <out>/flame/<service>.svg.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import baselines, cost, flood, ingress, report
from bench.targets import as_dicts, evaluate

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("cost", "ingress", "baselines", "fairness")


@dataclass
class Scale:
    """How big each part is."""

    jobs: int = 4000
    users: int = 50
    concurrency: int = 50
    warmup: int = 200
    idle_s: float = 3.0
    capacity_docs: int = 3000
    ingress: dict[str, Any] = field(
        default_factory=lambda: {
            "users": 50,
            "concurrency": [50, 200],
            "requests": 2000,
            "bare_requests": 10000,
            "open_s": 10.0,
        }
    )
    baseline_jobs: int = 4000
    small: int = 40
    period_s: float = 0.1
    flood: int = 4000
    flood_concurrency: int = 50
    driver_processes: int = 2


FULL = Scale()
SMOKE = Scale(
    jobs=60,
    users=3,
    concurrency=6,
    warmup=6,
    idle_s=0.5,
    capacity_docs=60,
    ingress={"users": 3, "concurrency": [4, 8], "requests": 40, "bare_requests": 80, "open_s": 1.0},
    baseline_jobs=100,
    small=5,
    flood=60,
    flood_concurrency=6,
)


def _git() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_parts(scale: Scale, parts: list[str], profile_dir: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    k = scale.driver_processes
    for part in parts:
        print(f"bench: {part} …", flush=True)
        t0 = time.perf_counter()
        if part == "cost":
            results["cost"] = cost.run(
                scale.jobs,
                scale.users,
                scale.concurrency,
                k,
                profile_dir=profile_dir,
                warmup=scale.warmup,
                idle_s=scale.idle_s,
                capacity_docs=scale.capacity_docs,
            )
        elif part == "ingress":
            results["ingress"] = ingress.run(scale.ingress, k)
        elif part == "baselines":
            results["baselines"] = baselines.run(scale.baseline_jobs)
        elif part == "fairness":
            results["fairness"] = flood.run(
                scale.small, scale.period_s, scale.flood, scale.flood_concurrency, k
            )
        timings[part] = round(time.perf_counter() - t0, 1)
    results["seconds"] = timings
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny numbers, temporary output, checks the files"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy flame graphs of the services (cost run)"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default bench/results; smoke: a temporary one)"
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts ({','.join(PARTS)})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    opts = parser.parse_args()
    parts = [p for p in opts.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}")
    complete = set(parts) == set(PARTS)
    out: Path = opts.out or (
        Path(tempfile.mkdtemp(prefix="flickrhub-bench-smoke-")) if opts.smoke else RESULTS
    )
    if out.resolve() == RESULTS.resolve() and (opts.smoke or not complete):
        parser.error("smoke and partial runs never write bench/results: pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    scale = SMOKE if opts.smoke else FULL
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "git": _git(),
        "scale": "smoke" if opts.smoke else "full",
        "profiled": opts.profile,
        "loadavg": {"before": _loadavg()},
    }
    results.update(run_parts(scale, parts, out / "flame" if opts.profile else None))
    results["loadavg"]["after"] = _loadavg()
    targets = evaluate(results)
    results["targets"] = as_dicts(targets)
    name = "profiled" if opts.profile else "latest"  # a profiled run's CPU figures are perturbed
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(report.markdown(results))
    if complete and not opts.smoke and not opts.profile:
        with (out / "history.jsonl").open("a") as history:
            history.write(json.dumps(results) + "\n")
    print()
    print(report.table(results))
    print()
    for t in targets:
        print(t.line())
    print(f"\n{sum(t.passed for t in targets)} of {len(targets)} targets pass; written to {out}")
    if opts.smoke:
        return _check_smoke(out, parts, name)
    return 1 if opts.strict and not all(t.passed for t in targets) else 0


def _check_smoke(out: Path, parts: list[str], name: str) -> int:
    """The smoke's own check: every part ran and the files are there (targets are not checked)."""
    data = json.loads((out / f"{name}.json").read_text())
    files = (f"{name}.json", f"{name}.md")
    missing = [p for p in parts if p not in data] + [f for f in files if not (out / f).exists()]
    if missing or not data["targets"]:
        print(f"bench smoke: FAILED, missing {missing or 'targets'}")
        return 1
    print(f"bench smoke: ok ({len(data['targets'])} targets evaluated, not enforced)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
