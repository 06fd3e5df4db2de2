"""Archival: old days of jobs go to zstd JSON lines (never a secret) and come back identical."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from bson import ObjectId

from cli.archiver import encode_line, file_name
from cli.main import main
from common.mongo import Mongo

NOW = datetime.now(UTC)


def _job(created: datetime, i: int, **extra: Any) -> dict[str, Any]:
    at = created.replace(microsecond=created.microsecond // 1000 * 1000)
    return {
        "_id": ObjectId(),
        "job_id": uuid.uuid4().hex,
        "client_id": "c",
        "user_id": "u",
        "token_id_hash": "t",
        "method": "flickr.test.echo",
        "params": {"i": str(i), "text": "naïve ✓"},
        "target": "rest",
        "priority": "normal",
        "status": "completed",
        "rev": 2,
        "attempts": 1,
        "max_attempts": 3,
        "callback_url": "",
        "meta_json": '{"k":[1,2.5,null]}',
        "result_json": '{"stat":"ok"}',
        "from_cache": False,
        "created_at": at,
        "updated_at": at,
        "finished_at": at,
        "expire_at": at + timedelta(days=90),
        **extra,
    }


def _cli(monkeypatch: pytest.MonkeyPatch, mongo_url: str, db: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MONGO_URL", mongo_url)
    monkeypatch.setenv("MONGO_DB", db)
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def _docs(mongo_url: str, db: str) -> dict[str, dict[str, Any]]:
    mongo = Mongo.connect(mongo_url, db)
    try:
        return {d["job_id"]: d async for d in mongo.jobs.find({"job_id": {"$gt": ""}})}
    finally:
        await mongo.close()


async def _run(mongo_url: str, db: str, action: str, docs: list[dict[str, Any]] | None = None) -> None:
    mongo = Mongo.connect(mongo_url, db)
    try:
        if action == "insert" and docs:
            await mongo.ensure_indexes()
            await mongo.jobs.insert_many(docs)
        elif action == "delete":
            await mongo.jobs.delete_many({"job_id": {"$in": [d["job_id"] for d in docs or []]}})
        elif action == "drop":
            await mongo.client.drop_database(db)
    finally:
        await mongo.close()


def test_archive_delete_restore_gives_back_identical_documents_and_no_secret(
    mongo_url: str, mongo_db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_day = (NOW - timedelta(days=12)).replace(hour=0, minute=0, second=0, microsecond=0)
    other_day = old_day + timedelta(days=2)
    old = [_job(old_day + timedelta(minutes=40 * i), i) for i in range(30)]
    old += [_job(other_day + timedelta(minutes=i), 100 + i) for i in range(5)]
    # A job whose webhook never finished still holds its (encrypted) secret: it must not be archived.
    old.append(
        _job(old_day + timedelta(hours=23), 999, callback_secret={"v": 1, "n": "bm9uY2U=", "c": "Y2lwaA=="})
    )
    recent = [_job(NOW - timedelta(hours=1), 500 + i) for i in range(3)]  # younger than the age: stays
    asyncio.run(_run(mongo_url, mongo_db_name, "insert", old + recent))
    try:
        before = asyncio.run(_docs(mongo_url, mongo_db_name))
        code, out, err = _cli(
            monkeypatch, mongo_url, mongo_db_name, "archive", "--dir", str(tmp_path), "--older-than-days", "7"
        )
        assert code == 0, err
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == [file_name(old_day), file_name(other_day)]
        assert "2 file(s) written with 36 job(s)" in out
        lines = []
        for name in files:
            with (tmp_path / name).open("rb") as fh:
                lines += zstandard.ZstdDecompressor().stream_reader(fh).read().decode().splitlines()
        assert len(lines) == 36
        assert not any("callback_secret" in line or "Y2lwaA==" in line for line in lines)
        # Run again: every day is already archived, nothing is rewritten.
        code, out, _ = _cli(
            monkeypatch, mongo_url, mongo_db_name, "archive", "--dir", str(tmp_path), "--older-than-days", "7"
        )
        assert code == 0 and "0 file(s) written" in out and "2 day(s) already archived" in out

        asyncio.run(_run(mongo_url, mongo_db_name, "delete", old))  # what the TTL would do, later
        assert set(asyncio.run(_docs(mongo_url, mongo_db_name))) == {d["job_id"] for d in recent}
        for name in files:
            code, out, err = _cli(monkeypatch, mongo_url, mongo_db_name, "restore", str(tmp_path / name))
            assert code == 0, err
        after = asyncio.run(_docs(mongo_url, mongo_db_name))
        secretless = {k: {f: v for f, v in d.items() if f != "callback_secret"} for k, d in before.items()}
        assert after == secretless  # identical documents, _id included; only the secret stayed out
        # Restoring again is an upsert by job_id: nothing doubles, nothing changes.
        code, out, _ = _cli(monkeypatch, mongo_url, mongo_db_name, "restore", str(tmp_path / files[0]))
        assert code == 0 and "0 inserted, 31 replaced" in out
        assert asyncio.run(_docs(mongo_url, mongo_db_name)) == after
    finally:
        asyncio.run(_run(mongo_url, mongo_db_name, "drop"))


def test_a_restored_job_past_its_retention_gets_time_and_a_bad_file_is_refused(
    mongo_url: str, mongo_db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = (NOW - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    gone = _job(day, 1, status="expired", expire_at=day + timedelta(days=30))  # the TTL would take it at once
    # Its archive is written as `flickrhub archive` writes one: in MongoDB the TTL sweep (every second
    # in tests) could remove the job before the archive command reads it.
    (tmp_path / file_name(day)).write_bytes(zstandard.ZstdCompressor().compress(encode_line(gone)))
    try:
        code, out, err = _cli(
            monkeypatch,
            mongo_url,
            mongo_db_name,
            "restore",
            str(tmp_path / file_name(day)),
            "--keep-days",
            "3",
        )
        assert code == 0 and "1 kept 3 more day(s)" in out, err
        back = asyncio.run(_docs(mongo_url, mongo_db_name))[gone["job_id"]]
        assert timedelta(days=2.9) < back["expire_at"] - datetime.now(UTC) <= timedelta(days=3)
        assert {k: v for k, v in back.items() if k != "expire_at"} == {
            k: v for k, v in gone.items() if k != "expire_at"
        }
        bad = tmp_path / "bad.jsonl.zst"
        bad.write_bytes(zstandard.ZstdCompressor().compress(b'{"no_job_id": 1}\n'))
        code, _, err = _cli(monkeypatch, mongo_url, mongo_db_name, "restore", str(bad))
        assert code == 1 and "line 1" in err
    finally:
        asyncio.run(_run(mongo_url, mongo_db_name, "drop"))
