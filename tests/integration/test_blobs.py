"""The blob store against SecantusDB: GridFS layout, streamed writes and reads, metadata, delete, abort."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket
from pymongo.asynchronous.database import AsyncDatabase

from common.blobs import BUCKET, CHUNK_SIZE, BlobStore


async def _write(store: BlobStore, data: bytes, piece: int) -> str:
    writer = store.writer("photo", {"job_id": "j1"})
    for start in range(0, len(data), piece):
        await writer.write(data[start : start + piece])
    return (await writer.close()).blob_id


async def test_a_blob_written_in_pieces_reads_back_through_gridfs(mongo_db: AsyncDatabase[Any]) -> None:
    store = BlobStore(mongo_db)
    await store.ensure_indexes()
    data = os.urandom(3 * CHUNK_SIZE + 1234)
    blob_id = await _write(store, data, 100_000)

    info = await store.info(blob_id)
    assert info is not None
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join([chunk async for chunk in store.read(blob_id)]) == data
    # PyMongo's own GridFS reader sees a standard file, with size and digest in its metadata.
    bucket = AsyncGridFSBucket(mongo_db, bucket_name=BUCKET)
    stream = await bucket.open_download_stream(ObjectId(blob_id))
    assert await stream.read() == data
    assert stream.metadata == {"job_id": "j1", "sha256": info.sha256, "size": len(data)}
    assert await mongo_db[f"{BUCKET}.chunks"].count_documents({}) == 4

    assert await store.delete(blob_id)
    assert await store.info(blob_id) is None
    assert await mongo_db[f"{BUCKET}.chunks"].count_documents({}) == 0
    assert not await store.delete(blob_id)


async def test_a_writer_holds_at_most_one_chunk_and_abort_removes_what_it_wrote(
    mongo_db: AsyncDatabase[Any],
) -> None:
    store = BlobStore(mongo_db)
    writer = store.writer("photo")
    await writer.write(os.urandom(2 * CHUNK_SIZE + 10))
    # Two full chunks are already in MongoDB before close(); the file document is not.
    assert await mongo_db[f"{BUCKET}.chunks"].count_documents({}) == 2
    assert await store.info(writer.blob_id) is None
    await writer.abort()
    assert await mongo_db[f"{BUCKET}.chunks"].count_documents({}) == 0


async def test_deleting_an_unfinished_blob_removes_its_chunks(mongo_db: AsyncDatabase[Any]) -> None:
    store = BlobStore(mongo_db)
    writer = store.writer("photo")
    await writer.write(os.urandom(CHUNK_SIZE))
    assert await store.delete(writer.blob_id)
    assert await mongo_db[f"{BUCKET}.chunks"].count_documents({}) == 0


async def test_reading_a_missing_or_malformed_blob_id_is_file_not_found(mongo_db: AsyncDatabase[Any]) -> None:
    store = BlobStore(mongo_db)
    for blob_id in (str(ObjectId()), "not-an-id"):
        try:
            async for _ in store.read(blob_id):
                pass
        except FileNotFoundError:
            continue
        raise AssertionError(f"{blob_id} read without error")
    assert await store.info("not-an-id") is None


async def test_a_write_cancelled_in_flight_leaves_no_chunk_after_abort(mongo_db: AsyncDatabase[Any]) -> None:
    store = BlobStore(mongo_db)
    await store.ensure_indexes()
    data = os.urandom(40 * CHUNK_SIZE)  # one insert_many of 40 chunks, ~10 MiB on the wire
    for delay_ms in range(0, 40, 2):
        writer = store.writer("photo")
        write = asyncio.create_task(writer.write(data))
        await asyncio.sleep(delay_ms / 1000)  # cancel it at different points of its round trip
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await writer.abort()
        await asyncio.sleep(0.1)  # room for an insert that was still on its way to land
        left = await mongo_db[f"{BUCKET}.chunks"].count_documents({"files_id": ObjectId(writer.blob_id)})
        assert left == 0, f"{left} orphan chunks after a cancel at {delay_ms} ms"
