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
