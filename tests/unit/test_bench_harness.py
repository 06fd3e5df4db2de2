"""The bench harness's pure parts: counters, driver bookkeeping, targets and the report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench import counters, driver, report, targets
from bench.procstat import group, per_unit_ms


def test_group_sums_replicas_only() -> None:
    assert group("worker-0") == "worker"
    assert group("mover-12") == "mover"
    assert group("cache-redis") == "cache-redis"
    assert group("gateway") == "gateway"


def test_per_unit_ms() -> None:
    assert per_unit_ms({"a": 2.0, "b": 0.5}, 1000) == {"a": 2.0, "b": 0.5}


def test_redis_delta_counts_script_commands_once_and_excludes_our_info() -> None:
    before = {"xadd": 10, "evalsha": 5, "info": 3, "zadd": 5}
    after = {"xadd": 30, "evalsha": 15, "info": 5, "zadd": 25, "get": 10}
    d = counters.redis_delta(before, after, jobs=10)
    assert d["total_calls"] == 20 + 10 + 20 + 10
    assert d["script_calls"] == 10
    assert d["executed"] == 50
    assert d["executed_per_job"] == 5.0
    assert "info" not in d["per_job"]
    assert next(iter(d["per_job"])) in ("xadd", "zadd")  # largest first


def test_mongo_delta_splits_reads_and_writes_by_namespace() -> None:
    zero = {"opcounters": {"insert": 0, "query": 0}, "top": {}}
    after = {
        "opcounters": {"insert": 2, "query": 1},
        "top": {
            "db.jobs": {"insert": 2, "update": 20, "writeLock": 22, "readLock": 0},
            "db.tokens": {"queries": 1, "readLock": 1, "writeLock": 0},
        },
    }
    d = counters.mongo_delta(zero, after, jobs=10)
    assert (d["writes"], d["reads"]) == (22, 1)
    assert d["writes_per_job"] == 2.2
    assert d["by_namespace_per_job"]["db.tokens"] == {"queries": 0.1, "readLock": 0.1}


def test_split_shares_requests_callers_and_rate() -> None:
    closed = driver.split({"mode": "closed", "requests": 101, "concurrency": 5}, 2)
    assert [c["requests"] for c in closed] == [51, 50]
    assert [c["concurrency"] for c in closed] == [3, 2]
    firsts = [c["first"] for c in closed]
    assert firsts[1] >= firsts[0] + closed[0]["requests"]  # request numbers never overlap
    opened = driver.split({"mode": "open", "requests": 10, "rate": 100.0}, 2)
    assert [c["rate"] for c in opened] == [50.0, 50.0]
    assert opened[1]["offset_s"] == pytest.approx(0.01)


def test_pct_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert driver.pct(values, 0.5) == 50.0
    assert driver.pct(values, 0.95) == 95.0
    assert driver.pct(values, 0.99) == 99.0
    assert driver.pct([], 0.5) == 0.0


def test_merged_require_refuses_a_broken_run() -> None:
    bad = driver.Merged(
        ok=5, errors={"INTERNAL": 5}, error_samples=["INTERNAL: x"], seconds=1, latencies=[], sent=[]
    )
    with pytest.raises(RuntimeError, match="INTERNAL"):
        bad.require("run")
    good = driver.Merged(ok=1000, errors={"INTERNAL": 1}, error_samples=[], seconds=1, latencies=[], sent=[])
    assert good.require("run") is good


def _lat(per_s: float, p95: float) -> dict[str, Any]:
    return {"per_s": per_s, "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 1.2, "requests": 100}


def _results() -> dict[str, Any]:
    proto = {
        "c50": {**_lat(200, 300), "cpu_ms_per_request": {"gateway": 1.0}},
        "c200": {**_lat(220, 600), "cpu_ms_per_request": {"gateway": 1.0}},
        "bare_c50": {**_lat(2000, 30), "cpu_ms_per_request": {"bare": 0.3}},
        "bare_c200": {**_lat(1800, 120), "cpu_ms_per_request": {"bare": 0.3}},
        "open_loop": {**_lat(110, 40), "offered_per_s": 110},
        "gateway_cpu_ms_per_request": 1.0,
        "bare_cpu_ms_per_request": 0.3,
        "edge_cpu_ms_per_request": 0.3,
        "throughput_vs_bare_c50": 0.1,
        "throughput_vs_bare_c200": 0.122,
    }
    return {
        "when": "2026-01-01T00:00:00+00:00",
        "machine": "test",
        "git": "abc",
        "scale": "full",
        "cost": {
            "jobs": 4000,
            "jobs_ended": 4000,
            "users": 50,
            "concurrency": 50,
            "submit": _lat(150, 500),
            "jobs_per_s": 80.0,
            "cpu_ms_per_job": {"gateway": 0.5, "mover": 0.5, "worker": 1.0, "cache": 0.3, "mongo": 5.0},
            "flickrhub_cpu_ms_per_job": 2.3,
            "mongo": {"writes_per_job": 2.02, "reads_per_job": 0.0},
            "redis": {
                "queue": {"executed_per_job": 10.0, "script_calls": 8000},
                "cache": {"executed_per_job": 2.0, "script_calls": 0},
            },
            "redis_executed_per_job": 12.0,
            "redis_total_per_job": 14.0,
            "store_capacity": {
                "jobs_per_s_bound": 90.0,
                "insert_docs_per_s": 900.0,
                "updates_per_s": 200.0,
                "insert_batch": 50,
                "write_concern": "journaled",
            },
            "rss_mb": {"gateway": 90.0, "worker-0": 120.0, "mongo": 300.0},
        },
        "ingress": {"grpc": copy.deepcopy(proto), "rest": copy.deepcopy(proto), "rss_mb": {"edge": 80.0}},
        "baselines": {
            "arq": {
                "cpu_ms_per_job": 1.0,
                "jobs_per_s": 400.0,
                "redis_cpu_ms_per_job": 0.2,
                "redis_commands_per_job": 23,
            },
            "redis_streams_floor": {"cpu_ms_per_job": 0.04, "jobs_per_s": 9000.0},
        },
        "fairness": {
            "small_jobs": 40,
            "small_period_ms": 100,
            "flood_jobs": 4000,
            "flood_concurrency": 50,
            "small_alone": {"p50_ms": 100.0, "p99_ms": 200.0, "submit_p50_ms": 10.0},
            "small_during_flood": {"p50_ms": 150.0, "p99_ms": 500.0, "submit_p50_ms": 30.0},
            "p50_ratio": 1.5,
            "p99_ratio": 2.5,
        },
    }


def test_targets_pass_and_fail_from_the_same_run() -> None:
    by_key = {t.key: t for t in targets.evaluate(_results())}
    assert by_key["cpu_per_job"].passed
    assert by_key["cpu_vs_arq"].passed  # 2.3 <= 2.5 x 1.0
    assert by_key["mongo_writes"].passed
    assert by_key["mongo_reads"].passed
    assert by_key["redis_commands"].passed
    assert not by_key["gateway_cpu_vs_bare"].passed  # 1.0 > 2 x 0.3
    assert by_key["edge_cpu"].passed
    # 200 req/s: half of bare (1,000) and 80% of the stand-in's 900 inserts/s (720): the lower applies.
    assert not by_key["submit_throughput_c50"].passed and by_key["submit_throughput_c50"].limit == 720
    assert not by_key["p95_grpc_c200"].passed  # 600 ms
    assert by_key["p95_rest_open"].passed  # 40 ms
    assert by_key["e2e_vs_store"].passed  # 80 >= 72
    assert by_key["rss"].passed and by_key["rss"].baseline == "worker-0"  # stores are not services
    assert by_key["fairness_p50"].passed
    assert not by_key["fairness_p99"].passed
    line = by_key["fairness_p99"].line()
    assert line.startswith("FAIL") and "500.0 ms vs 200.0 ms" in line


def test_submit_throughput_is_held_to_bare_alone_without_the_store_capacity() -> None:
    results = _results()
    del results["cost"]
    by_key = {t.key: t for t in targets.evaluate(results)}
    assert by_key["submit_throughput_c200"].limit == 900  # 0.5 x bare 1,800
    results = _results()
    results["cost"]["store_capacity"]["insert_docs_per_s"] = 5000.0
    by_key = {t.key: t for t in targets.evaluate(results)}
    assert by_key["submit_throughput_c50"].limit == 1000  # bare is the lower limit now
    assert "bare's applies" in by_key["submit_throughput_c50"].baseline


def test_targets_skip_parts_that_did_not_run() -> None:
    results = _results()
    del results["ingress"], results["baselines"]
    keys = {t.key for t in targets.evaluate(results)}
    assert "cpu_vs_arq" not in keys
    assert "gateway_cpu_vs_bare" not in keys
    assert "cpu_per_job" in keys


def test_report_table_and_readme_section(tmp_path: Path) -> None:
    results = _results()
    md = report.markdown(results)
    assert "| gRPC SubmitJob, c=50 | 200 req/s" in md
    assert "bare grpc.aio: 2,000 req/s" in md
    assert "Targets: " in md and "FAIL  Gateway CPU per SubmitJob" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# X\n\n## Performance\n\n{report.START}\nold\n{report.END}\n\n## Next\n")
    report.update_readme(results, readme)
    text = readme.read_text()
    assert "old" not in text and "| What | FlickrHub | Bare baseline, same run |" in text
    assert text.endswith("## Next\n")
