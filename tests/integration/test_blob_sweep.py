"""The orphan-blob sweep against SecantusDB: what a killed gateway left goes, what a live job holds stays.

Old blobs are written in the GridFS layout common.blobs writes, with ids made in the past (a blob's
age is its id's, and BlobWriter makes its own id); young ones through BlobStore's writer.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from common import blobs, blobsweep, jobs
from common.jobstore import now
from common.mongo import Mongo
from common.recovery import Sweeper
from common.settings import Settings, SettingsError

PHOTO = os.urandom(blobs.CHUNK_SIZE + 1000)  # two chunks


def _old_id(age: timedelta) -> ObjectId:
    """A unique ObjectId made `age` ago."""
    return ObjectId(ObjectId.from_datetime(now() - age).binary[:4] + os.urandom(8))


async def _write_old(db: AsyncDatabase[Any], job_id: str, *, complete: bool, age: timedelta) -> str:
    """A blob begun `age` ago: its chunks, then (if `complete`) its file document, as BlobWriter lays them."""
    oid = _old_id(age)
    pieces = [PHOTO[i : i + blobs.CHUNK_SIZE] for i in range(0, len(PHOTO), blobs.CHUNK_SIZE)]
    await db[blobsweep.CHUNKS].insert_many(
        [{"files_id": oid, "n": n, "data": d} for n, d in enumerate(pieces)]
    )
    if complete:
        digest = hashlib.sha256(PHOTO).hexdigest()
        await db[blobsweep.FILES].insert_one(
            {
                "_id": oid,
                "length": Int64(len(PHOTO)),
                "chunkSize": blobs.CHUNK_SIZE,
                "uploadDate": now() - age,
                "filename": job_id,
                "metadata": {"job_id": job_id, "user_id": "u1", "sha256": digest, "size": len(PHOTO)},
            }
        )
    return str(oid)


async def _write_fresh(store: blobs.BlobStore, job_id: str) -> str:
    writer = store.writer(job_id, {"job_id": job_id, "user_id": "u1"})
    await writer.write(PHOTO)
    return (await writer.close()).blob_id


async def _job(db: AsyncDatabase[Any], job_id: str, blob_id: str, status: str) -> None:
    await db["jobs"].insert_one(
        {"job_id": job_id, "status": status, "blob_id": blob_id, "method": "flickr.photos.upload"}
    )


async def _present(db: AsyncDatabase[Any], blob_id: str) -> bool:
    oid = ObjectId(blob_id)
    return bool(
        await db[blobsweep.CHUNKS].count_documents({"files_id": oid})
        or await db[blobsweep.FILES].count_documents({"_id": oid})
    )


async def test_the_sweep_removes_old_blobs_no_live_job_holds_and_nothing_else(
    mongo_url: str, mongo_db_name: str, redis_url: str, redis: Any
) -> None:
    settings = Settings.from_env(
        {}, redis_url=redis_url, mongo_url=mongo_url, mongo_db=mongo_db_name, blob_orphan_age_s=3600.0
    )
    mongo = Mongo.connect(mongo_url, mongo_db_name)
    try:
        await mongo.ensure_indexes()
        db, store, old = mongo.db, blobs.BlobStore(mongo.db), timedelta(hours=2)
        unfinished = await _write_old(db, "j-unfinished", complete=False, age=old)  # died mid-stream
        unclaimed = await _write_old(db, "j-unclaimed", complete=True, age=old)  # died before the job insert
        held = await _write_old(db, "j-live", complete=True, age=old)  # a queued upload waiting for hours
        await _job(db, "j-live", held, jobs.QUEUED)
        leaked = await _write_old(db, "j-done", complete=True, age=old)  # the worker's delete failed
        await _job(db, "j-done", leaked, jobs.COMPLETED)
        young = await _write_fresh(store, "j-young")  # an upload whose job is being inserted right now
        young_chunks = store.writer("j-streaming")  # an upload still streaming
        await young_chunks.write(PHOTO)
        info = await store.info(unclaimed)
        assert info is not None and info.size == len(PHOTO)  # the layout is the one BlobStore reads

        dry = await blobsweep.sweep(db, now() - timedelta(seconds=3600), dry_run=True)
        assert (dry.old, dry.removed) == (4, 3)
        assert all([await _present(db, b) for b in (unfinished, unclaimed, leaked)])

        report = await Sweeper(settings, redis, mongo.jobs, "test-sweeper").sweep(full=False)

        assert report.orphan_blobs == 3
        for gone in (unfinished, unclaimed, leaked):
            assert not await _present(db, gone), gone
        for kept in (held, young, young_chunks.blob_id):
            assert await _present(db, kept), kept
        assert b"".join([c async for c in store.read(held)]) == PHOTO
        # Two chunks each for the held and the young blob, the one full chunk the streaming writer wrote.
        assert await db[blobsweep.CHUNKS].count_documents({}) == 2 + 2 + 1
        again = await Sweeper(settings, redis, mongo.jobs, "test-sweeper").sweep(full=False)
        assert again.orphan_blobs == 0
    finally:
        await mongo.client.drop_database(mongo_db_name)
        await mongo.close()


def test_the_grace_must_be_positive() -> None:
    with pytest.raises(SettingsError, match="BLOB_ORPHAN_AGE_S"):
        Settings.from_env({"BLOB_ORPHAN_AGE_S": "0"})
