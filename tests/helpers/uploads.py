"""UploadJob streams as a gRPC client sends them: the job, the photo in chunks, then `end`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flickrhub.v1 import jobs_pb2

MIB = 1024 * 1024


def chunks_of(data: bytes, size: int = MIB) -> list[bytes]:
    """`data` cut into pieces of at most `size` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def upload_end(data: bytes) -> jobs_pb2.UploadJobRequest:
    """The stream's last message: the photo's size and SHA-256."""
    return jobs_pb2.UploadJobRequest(
        end=jobs_pb2.UploadEnd(size=len(data), sha256=hashlib.sha256(data).digest())
    )


def upload_messages(
    job: jobs_pb2.SubmitJobRequest, data: bytes, size: int = MIB
) -> Iterator[jobs_pb2.UploadJobRequest]:
    """A complete upload stream: `job`, `data` in chunks of `size`, `end`."""
    yield jobs_pb2.UploadJobRequest(job=job)
    for piece in chunks_of(data, size):
        yield jobs_pb2.UploadJobRequest(chunk=piece)
    yield upload_end(data)
