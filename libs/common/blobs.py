"""Photo bytes of upload and replace jobs, kept in MongoDB GridFS (bucket `uploads`) until the job ends.

Bytes never ride in a Redis stream entry: the job carries the blob id. The blob
is written as the chunks stream in, its size and SHA-256 go into the GridFS
file document's `metadata`, and reads stream chunk by chunk.

Writes build the GridFS layout themselves (chunk documents `{files_id, n, data}`
first, the file document last, exactly as the GridFS spec lays them out) instead
of using `AsyncGridFSBucket.open_upload_stream`: PyMongo's AsyncGridIn buffers
chunk documents until 48 MB (its insert_many batch) before writing any, so a
photo under that size would sit whole in memory. Here each piece is written as
it arrives, so a writer holds at most the piece being written plus one partial
chunk. Reads go through `AsyncGridFSBucket`, which proves the layout standard.
A writer that never closes leaves chunks without a file document; they are
invisible to readers, and `abort()` (or `delete`) removes them. What a killed
gateway leaves behind, the orphan sweep (common.blobsweep) removes.

Every write runs in a task of its own that a cancelled caller does not cancel, and
`abort()` waits for it before deleting: a cancelled `insert_many` may still reach
the server after the delete (its request is already on the wire), which left
orphan chunks behind a cancelled upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Int64, ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

Doc = dict[str, Any]

BUCKET = "uploads"
# GridFS's default chunk size (255 KiB): small enough to stay well under BSON's 16 MB document limit.
CHUNK_SIZE = 255 * 1024
# The indexes GridFS drivers create (same names, so PyMongo's own check finds them in place).
INDEXES: dict[str, list[IndexModel]] = {
    f"{BUCKET}.chunks": [
        IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True, name="files_id_1_n_1"),
        # One entry per blob (its first chunk): the orphan sweep (common.blobsweep) finds old blobs
        # here with `n: 0` and a range on `files_id`; every other chunk pays nothing.
        IndexModel(
            [("n", ASCENDING), ("files_id", ASCENDING)], name="first_chunk", partialFilterExpression={"n": 0}
        ),
    ],
    f"{BUCKET}.files": [
        IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)], name="filename_1_uploadDate_1")
    ],
}


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its id (hex ObjectId), size in bytes and SHA-256 (hex)."""

    blob_id: str
    size: int
    sha256: str


def _object_id(blob_id: str) -> ObjectId | None:
    try:
        return ObjectId(blob_id)
    except (InvalidId, TypeError):
        return None


class BlobWriter:
    """Writes one blob piece by piece; `close()` publishes it, `abort()` removes what was written."""

    def __init__(self, db: AsyncDatabase[Doc], bucket: str, filename: str, metadata: dict[str, Any]) -> None:
        self._chunks = db[f"{bucket}.chunks"]
        self._files = db[f"{bucket}.files"]
        self._id = ObjectId()
        self._filename = filename
        self._metadata = dict(metadata)
        self._sha = hashlib.sha256()
        self._pending = bytearray()
        self._n = 0
        self._inflight: asyncio.Future[Any] | None = None
        self.size = 0
        self.closed = False

    @property
    def blob_id(self) -> str:
        """The id the blob will have (known before the first byte is written)."""
        return str(self._id)

    def digest(self) -> bytes:
        """SHA-256 of every byte written so far (the 32-byte digest)."""
        return self._sha.digest()

    async def _run(self, operation: Awaitable[Any]) -> Any:
        """Await a write that runs on even if the caller is cancelled, so `abort()` can wait for it."""
        self._inflight = asyncio.ensure_future(operation)
        return await asyncio.shield(self._inflight)

    async def write(self, data: bytes) -> None:
        """Append `data`; every full GridFS chunk is written at once."""
        if self.closed:
            raise ValueError("blob writer already closed")
        self._sha.update(data)
        self.size += len(data)
        self._pending += data
        full = len(self._pending) // CHUNK_SIZE * CHUNK_SIZE
        if full:
            await self._write_chunks(bytes(self._pending[:full]))
            del self._pending[:full]

    async def _write_chunks(self, data: bytes) -> None:
        docs = []
        for start in range(0, len(data), CHUNK_SIZE):
            docs.append({"files_id": self._id, "n": self._n, "data": data[start : start + CHUNK_SIZE]})
            self._n += 1
        await self._run(self._chunks.insert_many(docs, ordered=True))

    async def close(self) -> BlobInfo:
        """Write the last partial chunk and the file document (with size and SHA-256 in metadata)."""
        if self._pending:
            await self._write_chunks(bytes(self._pending))
            self._pending.clear()
        self.closed = True
        digest = self._sha.hexdigest()
        await self._run(
            self._files.insert_one(
                {
                    "_id": self._id,
                    "length": Int64(self.size),
                    "chunkSize": CHUNK_SIZE,
                    "uploadDate": datetime.now(UTC),
                    "filename": self._filename,
                    "metadata": {**self._metadata, "sha256": digest, "size": self.size},
                }
            )
        )
        return BlobInfo(self.blob_id, self.size, digest)

    async def abort(self) -> None:
        """Remove every chunk written so far (and the file document, if close() got that far)."""
        self.closed = True
        self._pending.clear()
        if self._inflight is not None:  # a write its cancelled caller left running: let it land first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)
        await self._chunks.delete_many({"files_id": self._id})
        await self._files.delete_one({"_id": self._id})


class BlobStore:
    """The `uploads` GridFS bucket."""

    def __init__(self, db: AsyncDatabase[Doc], bucket: str = BUCKET) -> None:
        self._db = db
        self._bucket_name = bucket
        self._bucket = AsyncGridFSBucket(db, bucket_name=bucket, chunk_size_bytes=CHUNK_SIZE)

    async def ensure_indexes(self) -> None:
        """Create the bucket's indexes; a no-op when they exist."""
        for name, models in INDEXES.items():
            await self._db[name.replace(BUCKET, self._bucket_name, 1)].create_indexes(models)

    def writer(self, filename: str, metadata: dict[str, Any] | None = None) -> BlobWriter:
        """A writer for a new blob."""
        return BlobWriter(self._db, self._bucket_name, filename, metadata or {})

    async def info(self, blob_id: str) -> BlobInfo | None:
        """Size and SHA-256 of a published blob, or None."""
        oid = _object_id(blob_id)
        if oid is None:
            return None
        doc = await self._db[f"{self._bucket_name}.files"].find_one({"_id": oid})
        if doc is None:
            return None
        meta = doc.get("metadata") or {}
        return BlobInfo(blob_id, int(doc["length"]), str(meta.get("sha256", "")))

    async def read(self, blob_id: str) -> AsyncIterator[bytes]:
        """The blob's bytes, one GridFS chunk at a time; FileNotFoundError if there is no such blob."""
        oid = _object_id(blob_id)
        if oid is None:
            raise FileNotFoundError(blob_id)
        try:
            stream = await self._bucket.open_download_stream(oid)
        except NoFile:
            raise FileNotFoundError(blob_id) from None
        try:
            while chunk := await stream.readchunk():
                yield chunk
        finally:
            await stream.close()

    async def delete(self, blob_id: str) -> bool:
        """Remove a blob (and any chunks of an unfinished one); False if nothing was there."""
        oid = _object_id(blob_id)
        if oid is None:
            return False
        # What AsyncGridFSBucket.delete does (file document first, so readers stop seeing it), except
        # that chunks of an unfinished write (no file document) count as something deleted.
        files = await self._db[f"{self._bucket_name}.files"].delete_one({"_id": oid})
        chunks = await self._db[f"{self._bucket_name}.chunks"].delete_many({"files_id": oid})
        return files.deleted_count + chunks.deleted_count > 0
