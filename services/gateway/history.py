"""ListJobs: a user's job history, newest first, in opaque keyset pages, each client seeing its own.

"Own" is precise: a job belongs to the API key that submitted it (its `client_id`, the key id,
which survives rotation). A non-admin key sees only its own jobs, whichever users it is bound to;
an admin key sees every client's jobs of the user unless it names a `client_id`. The user check
(`identity.require_user`) applies to both. The same rule decides which single jobs a key may read
or cancel by id (`may_see`, for GetJob, WatchJob, CancelJob and the legacy status route).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from google.protobuf import timestamp_pb2

from common import jobs
from common.errors import FieldViolation, InvalidArgument
from common.jobstore import JobStore
from common.mongo import Doc
from flickrhub.v1 import jobs_pb2
from gateway import convert, identity, validation
from gateway import history_query as history

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def _time(
    request: jobs_pb2.ListJobsRequest, name: Literal["created_after", "created_before"]
) -> datetime | None:
    if not request.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _check(request: jobs_pb2.ListJobsRequest) -> None:
    bad = []
    if not validation.USER_ID_RE.fullmatch(request.user_id):
        bad.append(FieldViolation("user_id", "required"))
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        bad.append(FieldViolation("page_size", f"0..{MAX_PAGE_SIZE}"))
    if request.state not in jobs_pb2.JobState.values():
        bad.append(FieldViolation("state", "unknown state"))
    if request.method and (len(request.method) > 128 or not validation.METHOD_RE.fullmatch(request.method)):
        bad.append(FieldViolation("method", "a Flickr method, e.g. flickr.photos.search"))
    if len(request.client_id) > 64:
        bad.append(FieldViolation("client_id", "an API key id"))
    after, before = _time(request, "created_after"), _time(request, "created_before")
    if after is not None and before is not None and after >= before:
        bad.append(FieldViolation("created_before", "must be later than created_after"))
    if bad:
        raise InvalidArgument("invalid ListJobsRequest", bad)


def scope(request: jobs_pb2.ListJobsRequest) -> str | None:
    """The client whose jobs the caller may see (None: every client, for admin keys)."""
    if identity.is_admin():
        return request.client_id or None
    own = identity.client_id()
    if request.client_id and request.client_id != own:
        raise identity.PermissionDenied(
            "a non-admin API key sees only the jobs it submitted", "CLIENT_NOT_ALLOWED"
        )
    return own


def may_see(doc: Doc) -> bool:
    """Whether the caller sees this job at all (after `identity.require_user` let it act for the job's user).

    Admin keys see every job; any other key only the jobs it submitted. A job without a client
    (written before jobs recorded theirs, or by a path with no API key) has no owner to match:
    only admin keys see it, as in ListJobs, whose non-admin pages never hold it either.
    """
    if identity.is_admin():
        return True
    owner = doc.get("client_id")
    return bool(owner) and owner == identity.client_id()


async def list_jobs(
    store: JobStore, request: jobs_pb2.ListJobsRequest, max_examined: int
) -> jobs_pb2.ListJobsResponse:
    """One page of the caller's view of a user's jobs, reading at most `max_examined` rows."""
    _check(request)
    identity.require_user(request.user_id)
    query = history.JobQuery(
        user_id=request.user_id,
        client_id=scope(request),
        state=jobs.state_from_proto(request.state),
        method=request.method or None,
        created_after=_time(request, "created_after"),
        created_before=_time(request, "created_before"),
        after=convert.decode_cursor(request.page_token) if request.page_token else None,
    )
    size = request.page_size or DEFAULT_PAGE_SIZE
    page = await history.list_page(store.jobs, query, size, max_examined=max_examined)
    next_token = convert.encode_cursor(*page.resume_after) if page.resume_after else ""
    return jobs_pb2.ListJobsResponse(
        jobs=[convert.job_to_proto(d) for d in page.jobs], next_page_token=next_token
    )
