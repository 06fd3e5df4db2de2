"""The Markdown summary of a run (bench/results/latest.md) and the README's Performance section.

Every cell is a figure of the run's JSON with the baseline measured in the same run.

    .venv/bin/python -m bench.report [results.json] [--readme]   # print, or rewrite README's table
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.targets import Target, evaluate

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _lat(run: dict[str, Any]) -> str:
    ms = "/".join(_n(run[f"{q}_ms"]) for q in ("p50", "p95", "p99"))
    return f"{_n(run['per_s'])} req/s, P50/P95/P99 {ms} ms"


def _ingress_rows(ing: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    names = {"grpc": ("gRPC SubmitJob", "bare grpc.aio"), "rest": ("REST POST /v1/jobs", "bare aiohttp")}
    for proto, (what, bare) in names.items():
        part = ing[proto]
        for key in sorted((k for k in part if re.fullmatch(r"c\d+", k)), key=lambda k: int(k[1:])):
            ratio = part[key]["per_s"] / part[f"bare_{key}"]["per_s"]
            rows.append(
                (
                    f"{what}, c={key[1:]}",
                    _lat(part[key]),
                    f"{bare}: {_lat(part[f'bare_{key}'])} ({ratio:.2f}x)",
                )
            )
        ol = part["open_loop"]
        rows.append((f"{what}, open loop at {_n(ol['offered_per_s'])}/s (half the max)", _lat(ol), "—"))
    g, r = ing["grpc"], ing["rest"]
    rows.append(
        (
            "Gateway CPU per SubmitJob",
            f"{g['gateway_cpu_ms_per_request']} ms",
            f"bare grpc.aio: {g['bare_cpu_ms_per_request']} ms",
        )
    )
    rows.append(
        (
            "Edge's own CPU per REST request (gateway's on top)",
            f"{_n(r['edge_cpu_ms_per_request'])} ms (gateway {_n(r['gateway_cpu_ms_per_request'])} ms)",
            f"bare aiohttp: {r['bare_cpu_ms_per_request']} ms",
        )
    )
    return rows


def _cost_rows(cost: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, str, str]]:
    cpu, cap, mongo = cost["cpu_ms_per_job"], cost["store_capacity"], cost["mongo"]
    arq, floor = base.get("arq"), base.get("redis_streams_floor")
    arq_rate = f"arq: {arq['jobs_per_s']} jobs/s" if arq else "—"
    floor_rate = f"; Streams floor: {_n(floor['jobs_per_s'])} jobs/s" if floor else ""
    arq_cpu = f"arq: {_n(arq['cpu_ms_per_job'])} ms" if arq else "—"
    floor_cpu = f"; Streams floor: {_n(floor['cpu_ms_per_job'])} ms" if floor else ""
    ratio = cost["jobs_per_s"] / cap["jobs_per_s_bound"]
    queue, cache = cost["redis"]["queue"], cost["redis"]["cache"]
    stores = ", ".join(
        f"{label} {_n(cpu.get(name, 0.0))} ms"
        for name, label in (
            ("mongo", "MongoDB stand-in"),
            ("redis", "queue Redis"),
            ("cache-redis", "cache Redis"),
        )
    )
    return [
        (
            f"End to end, {cost['jobs']:,} echo jobs over {cost['users']} tokens (c={cost['concurrency']})",
            f"{cost['jobs_per_s']} jobs/s, {cost['jobs_ended']:,} ended; submit {_lat(cost['submit'])}",
            f"{arq_rate}{floor_rate}",
        ),
        (
            "FlickrHub CPU per completed job (gateway + mover + workers + cache)",
            f"{_n(cost['flickrhub_cpu_ms_per_job'])} ms",
            f"{arq_cpu}{floor_cpu} (Redis excluded)",
        ),
        (
            "CPU per job by process",
            ", ".join(
                f"{name} {_n(cpu.get(name, 0.0))} ms"
                for name in ("gateway", "mover", "worker", "cache", "edge")
            ),
            "—",
        ),
        (
            "Store CPU per job",
            f"{stores}; Flickr (sandbox) {_n(cpu.get('sandbox', 0.0))} ms",
            f"arq's Redis: {arq['redis_cpu_ms_per_job']} ms" if arq else "—",
        ),
        (
            "MongoDB commands per job",
            f"{mongo['writes_per_job']} writes, {mongo['reads_per_job']} reads",
            f"stand-in alone: {_n(cap['insert_docs_per_s'])} inserts/s (batches of {cap['insert_batch']}), "
            f"{_n(cap['updates_per_s'])} updates/s, {cap['write_concern']}",
        ),
        (
            "End-to-end jobs/s vs the stand-in's write capacity",
            f"{cost['jobs_per_s']} jobs/s ({ratio:.0%})",
            f"bound: {cap['jobs_per_s_bound']} jobs/s (1 insert + 2 updates)",
        ),
        (
            "Redis commands per job (in scripts and pipelines counted)",
            f"{_n(cost['redis_executed_per_job'])} (queue {_n(queue['executed_per_job'])}, "
            f"cache {_n(cache['executed_per_job'])}; EVALSHA/EVAL on top: "
            f"{_n((queue['script_calls'] + cache['script_calls']) / max(cost['jobs'], 1))})",
            f"arq: {_n(arq['redis_commands_per_job'])}" if arq else "—",
        ),
    ]


def table(results: dict[str, Any]) -> str:
    """The run's figures against their same-run baselines, as a Markdown table."""
    rows: list[tuple[str, str, str]] = []
    if "ingress" in results:
        rows += _ingress_rows(results["ingress"])
    if "cost" in results:
        rows += _cost_rows(results["cost"], results.get("baselines", {}))
    targets = evaluate(results)
    rss = next((t for t in targets if t.key == "rss"), None)
    if rss is not None:
        rows.append(
            ("Largest RSS of a service after load", f"{rss.value} MB ({rss.baseline})", "target < 200 MB")
        )
    if "fairness" in results:
        f = results["fairness"]
        a, d = f["small_alone"], f["small_during_flood"]
        rows.append(
            (
                f"Fairness: a small token's {f['small_jobs']} jobs (one per {f['small_period_ms']} ms) while "
                f"another token of the same client submits {f['flood_jobs']:,} at c={f['flood_concurrency']}",
                f"P50 {d['p50_ms']} ms ({f['p50_ratio']}x), P99 {d['p99_ms']} ms ({f['p99_ratio']}x); "
                f"submission P50 {d['submit_p50_ms']} ms",
                f"alone: P50 {a['p50_ms']} ms, P99 {a['p99_ms']} ms; submission P50 {a['submit_p50_ms']} ms",
            )
        )
    lines = ["| What | FlickrHub | Bare baseline, same run |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def targets_block(targets: list[Target]) -> str:
    passed = sum(t.passed for t in targets)
    return "\n".join(
        [f"Targets: {passed} of {len(targets)} pass.", "", "```", *(t.line() for t in targets), "```"]
    )


def markdown(results: dict[str, Any]) -> str:
    """latest.md: when, where, the table, the targets."""
    head = (
        f"# make bench — {results['when']}\n\n"
        f"{results['machine']}; commit {results['git']}; scale {results['scale']}; "
        f"load average before/after: {results.get('loadavg', {}).get('before', '?')} / "
        f"{results.get('loadavg', {}).get('after', '?')}"
        f"{'; PROFILED (py-spy attached: CPU figures perturbed)' if results.get('profiled') else ''}\n"
    )
    return f"{head}\n{table(results)}\n\n{targets_block(evaluate(results))}\n"


def update_readme(results: dict[str, Any], readme: Path = ROOT / "README.md") -> None:
    """Rewrite the table between the markers of README's Performance section."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} … {END} markers (the Performance section)")
    load = results.get("loadavg", {})
    body = (
        f"{START}\n_`make bench`, {results['when']}, commit {results['git']}, {results['machine']}, "
        f"load average {load.get('before', '?')} → {load.get('after', '?')}:_\n\n"
        f"{table(results)}\n\n{targets_block(evaluate(results))}\n{END}"
    )
    head, rest = text.split(START, 1)
    readme.write_text(head + body + rest.split(END, 1)[1])


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT / "bench" / "results" / "latest.json"
    results = json.loads(path.read_text())
    if "--readme" in sys.argv:
        update_readme(results)
        print("README.md: Performance table updated from", path)
    else:
        print(markdown(results))


if __name__ == "__main__":
    main()
