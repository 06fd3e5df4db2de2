"""Flickr's failure vocabulary, mapped once: what is transient, what is permanent, what a job records.

Transient (retry with backoff): HTTP 429 and 5xx, timeouts and connection
errors, Flickr codes 105 (service unavailable) and 106 (write failed), and the
OAuth problems a retry can fix (timestamp refused, nonce reused). Everything
else Flickr refuses is permanent and fails the job at once with Flickr's code
and message kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

TRANSIENT_FLICKR_CODES = frozenset({105, 106})
TRANSIENT_OAUTH_PROBLEMS = frozenset({"timestamp_refused", "nonce_used"})

FLICKR_ERROR = "FLICKR_ERROR"
FLICKR_UNAVAILABLE = "FLICKR_UNAVAILABLE"
FLICKR_RATE_LIMITED = "FLICKR_RATE_LIMITED"
FLICKR_AUTH_REJECTED = "FLICKR_AUTH_REJECTED"
FLICKR_BAD_RESPONSE = "FLICKR_BAD_RESPONSE"
ATTEMPTS_EXHAUSTED = "ATTEMPTS_EXHAUSTED"
# A write whose outcome FlickrHub cannot know (its worker died mid-call, or the call timed out
# after it was sent): never resent; the client decides (docs/architecture.md, effectively-once writes).
WRITE_OUTCOME_UNKNOWN = "WRITE_OUTCOME_UNKNOWN"
TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"


@dataclass(frozen=True)
class Failure:
    """One failed Flickr call, classified."""

    code: str
    message: str
    retryable: bool
    flickr_code: int = 0
    http_status: int = 0
    # Counts toward the per-key breaker (429) or the Flickr-wide one (5xx, timeouts).
    breaker: str = ""
    # Upload code 9 (dedup_check): the photo Flickr already has.
    duplicate_photo_id: str = ""

    @property
    def ambiguous(self) -> bool:
        """True when the call may have reached Flickr but no answer came back (timeout, lost connection)."""
        return (
            self.retryable
            and self.http_status == 0
            and self.flickr_code == 0
            and self.code == FLICKR_UNAVAILABLE
        )


def from_envelope(code: int, message: str) -> Failure:
    """A `{"stat":"fail"}` answer."""
    retryable = code in TRANSIENT_FLICKR_CODES
    return Failure(
        FLICKR_UNAVAILABLE if retryable else FLICKR_ERROR,
        message,
        retryable,
        flickr_code=code,
        breaker="flickr" if retryable else "",
    )


def from_http(status: int, body: str) -> Failure:
    """A non-200 HTTP answer."""
    if status == 429:
        return Failure(
            FLICKR_RATE_LIMITED, "Flickr rate limit (HTTP 429)", True, http_status=429, breaker="key"
        )
    if status >= 500:
        return Failure(
            FLICKR_UNAVAILABLE, f"Flickr answered HTTP {status}", True, http_status=status, breaker="flickr"
        )
    if status == 401:
        problem = parse_qs(body).get("oauth_problem", ["unknown"])[0]
        return Failure(
            FLICKR_AUTH_REJECTED,
            f"Flickr refused the OAuth signature or token: {problem}",
            problem in TRANSIENT_OAUTH_PROBLEMS,
            http_status=401,
        )
    return Failure(FLICKR_BAD_RESPONSE, f"Flickr answered HTTP {status}", False, http_status=status)


def from_transport(exc: BaseException) -> Failure:
    """A timeout or connection error before Flickr answered."""
    kind = "timed out" if isinstance(exc, TimeoutError) else f"connection failed ({type(exc).__name__})"
    return Failure(FLICKR_UNAVAILABLE, f"Flickr call {kind}", True, breaker="flickr")


def bad_payload(detail: str) -> Failure:
    """HTTP 200 whose body is not a Flickr envelope."""
    return Failure(
        FLICKR_BAD_RESPONSE, f"unreadable Flickr answer: {detail}", True, http_status=200, breaker="flickr"
    )


# Upload and replace (up.flickr.com, XML answers; docs/flickr-api.md §3). Code 3 "General upload failure"
# and 105/106 are worth another attempt; the rest say the photo or the account is the problem
# (2 no photo, 4 size zero, 5 unrecognised type, 6/7 upload limits, 8 too large, 9 duplicate)
# or the credentials are (95-100). Codes outside both sets (0, 10-14, 116, …) are permanent too.
TRANSIENT_UPLOAD_CODES = frozenset({3, 105, 106})
PERMANENT_UPLOAD_CODES = frozenset({2, 4, 5, 6, 7, 8, 9, 95, 96, 97, 98, 99, 100})
UPLOAD_TICKET_FAILED = "UPLOAD_TICKET_FAILED"
UPLOAD_TICKET_TIMEOUT = "UPLOAD_TICKET_TIMEOUT"
UPLOAD_BLOB_MISSING = "UPLOAD_BLOB_MISSING"


def from_upload_envelope(code: int, message: str, duplicate_photo_id: str = "") -> Failure:
    """An upload or replace `<rsp stat="fail"><err code msg/>` answer."""
    retryable = code in TRANSIENT_UPLOAD_CODES
    if duplicate_photo_id:
        message = f"{message} (duplicate_photo_id={duplicate_photo_id})"
    return Failure(
        FLICKR_UNAVAILABLE if retryable else FLICKR_ERROR,
        message,
        retryable,
        flickr_code=code,
        breaker="flickr" if code == 105 else "",
        duplicate_photo_id=duplicate_photo_id,
    )


def ticket_failed(ticket_id: str) -> Failure:
    """checkTickets said complete=2 (or invalid=1): Flickr gave up on the async upload."""
    return Failure(UPLOAD_TICKET_FAILED, f"Flickr could not process upload ticket {ticket_id}", False)


def ticket_timeout(ticket_id: str, waited_s: float) -> Failure:
    """The ticket did not complete in time; permanent, since retrying would upload the photo twice."""
    return Failure(
        UPLOAD_TICKET_TIMEOUT,
        f"upload ticket {ticket_id} still pending after {waited_s:.0f}s; the photo may appear later",
        False,
    )


def blob_missing(blob_id: str) -> Failure:
    """The job's photo bytes are gone from the blob store."""
    return Failure(UPLOAD_BLOB_MISSING, f"photo bytes {blob_id or '(none)'} are not in the blob store", False)
