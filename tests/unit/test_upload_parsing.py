"""Pure upload logic: Flickr's XML answers, checkTickets answers, upload-job validation, the entry field."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from common import flickr_errors
from common.flickr_errors import Failure
from common.jobs import JobEntry
from flickrhub.v1 import jobs_pb2
from gateway.acceptance import undo
from gateway.uploads import end_violations, prepare
from worker.uploads import UploadAnswer, parse_upload_answer, ticket_state

XML = '<?xml version="1.0" encoding="utf-8" ?>\n'


def test_sync_upload_answer_is_the_photo_id() -> None:
    answer = parse_upload_answer(XML + '<rsp stat="ok">\n<photoid>1234</photoid>\n</rsp>')
    assert answer == UploadAnswer(photoid="1234")
    assert answer.result() == {"stat": "ok", "photoid": "1234"}


def test_replace_answer_keeps_both_secrets() -> None:
    text = '<rsp stat="ok"><photoid secret="abcdef" originalsecret="b1b2">1234</photoid></rsp>'
    answer = parse_upload_answer(text)
    assert isinstance(answer, UploadAnswer)
    assert answer.result() == {"stat": "ok", "photoid": "1234", "secret": "abcdef", "originalsecret": "b1b2"}


def test_async_answer_is_a_ticket_not_a_photo_id() -> None:
    answer = parse_upload_answer('<rsp stat="ok"><ticketid>907</ticketid></rsp>')
    assert answer == UploadAnswer(ticketid="907")


@pytest.mark.parametrize(
    ("code", "retryable", "kind"),
    [
        (2, False, flickr_errors.FLICKR_ERROR),
        (3, True, flickr_errors.FLICKR_UNAVAILABLE),
        (4, False, flickr_errors.FLICKR_ERROR),
        (5, False, flickr_errors.FLICKR_ERROR),
        (8, False, flickr_errors.FLICKR_ERROR),
        (98, False, flickr_errors.FLICKR_ERROR),
        (99, False, flickr_errors.FLICKR_ERROR),
        (105, True, flickr_errors.FLICKR_UNAVAILABLE),
        (106, True, flickr_errors.FLICKR_UNAVAILABLE),
        (116, False, flickr_errors.FLICKR_ERROR),
    ],
)
def test_failures_keep_flickrs_code_and_know_whether_to_retry(code: int, retryable: bool, kind: str) -> None:
    failure = parse_upload_answer(f'<rsp stat="fail"><err code="{code}" msg="Nope" /></rsp>')
    assert isinstance(failure, Failure)
    assert (failure.code, failure.flickr_code, failure.retryable, failure.message) == (
        kind,
        code,
        retryable,
        "Nope",
    )


def test_duplicate_keeps_the_duplicate_photo_id() -> None:
    text = (
        '<rsp stat="fail"><err code="9" msg="Duplicate photo/video detected" />'
        "<duplicate_photo_id>555</duplicate_photo_id></rsp>"
    )
    failure = parse_upload_answer(text)
    assert isinstance(failure, Failure)
    assert (failure.flickr_code, failure.duplicate_photo_id, failure.retryable) == (9, "555", False)
    assert "555" in failure.message


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>oops</body></html>",
        "not xml at all",
        '<rsp stat="weird"/>',
        '<rsp stat="ok"></rsp>',
        '<!DOCTYPE r [<!ENTITY a "aaaa">]><rsp stat="ok"><photoid>&a;</photoid></rsp>',
    ],
)
def test_unreadable_answers_are_bad_payloads(text: str) -> None:
    failure = parse_upload_answer(text)
    assert isinstance(failure, Failure)
    assert failure.code == flickr_errors.FLICKR_BAD_RESPONSE


def test_a_failed_envelope_without_a_code_is_still_a_failure() -> None:
    failure = parse_upload_answer('<rsp stat="fail"><err msg="?"/></rsp>')
    assert isinstance(failure, Failure)
    assert failure.flickr_code == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"uploader": {"ticket": [{"id": "128", "complete": 1, "photoid": "2995"}]}}, (1, "2995")),
        ({"uploader": {"ticket": [{"id": "128", "complete": "0"}]}}, (0, "")),
        ({"uploader": {"ticket": [{"id": "128", "complete": 2}]}}, (2, "")),
        ({"uploader": {"ticket": [{"id": "128", "invalid": 1}]}}, (-1, "")),
        ({"uploader": {"ticket": {"id": "128", "complete": 1, "photoid": {"_content": "7"}}}}, (1, "7")),
        ({"uploader": {"ticket": [{"id": "999", "complete": 1, "photoid": "1"}]}}, (-1, "")),
        ({}, (-1, "")),
    ],
)
def test_ticket_state_reads_checktickets_json(body: dict[str, object], expected: tuple[int, str]) -> None:
    assert ticket_state(body, "128") == expected


def test_upload_method_is_filled_in_from_the_target() -> None:
    job, target = prepare(jobs_pb2.SubmitJobRequest(user_id="u", target=jobs_pb2.TARGET_UPLOAD))
    assert (job.method, target) == ("flickr.photos.upload", "upload")
    job, target = prepare(
        jobs_pb2.SubmitJobRequest(user_id="u", target=jobs_pb2.TARGET_REPLACE, params={"photo_id": "12"})
    )
    assert (job.method, target) == ("flickr.photos.replace", "replace")


def test_the_blob_id_rides_in_the_entry_only_when_set() -> None:
    entry = JobEntry("j", "t", "u", "flickr.photos.upload", "upload", {}, 5, blob_id="65f0")
    assert JobEntry.from_fields(entry.to_fields()).blob_id == "65f0"
    rest = JobEntry("j", "t", "u", "flickr.test.echo", "rest", {}, 5)
    assert "blob_id" not in rest.to_fields()
    assert JobEntry.from_fields(rest.to_fields()).blob_id == ""


PHOTO = b"\xff\xd8" + bytes(range(256)) * 40
DIGEST = hashlib.sha256(PHOTO).digest()


@pytest.mark.parametrize(
    ("end", "size", "fields"),
    [
        (jobs_pb2.UploadEnd(size=len(PHOTO), sha256=DIGEST), len(PHOTO), []),
        (None, len(PHOTO), ["end"]),
        (None, 0, ["end", "chunk"]),
        (jobs_pb2.UploadEnd(size=len(PHOTO) + 1, sha256=DIGEST), len(PHOTO), ["end.size"]),
        (jobs_pb2.UploadEnd(size=len(PHOTO), sha256=DIGEST[::-1]), len(PHOTO), ["end.sha256"]),
        (jobs_pb2.UploadEnd(size=len(PHOTO), sha256=DIGEST.hex().encode()), len(PHOTO), ["end.sha256"]),
        (jobs_pb2.UploadEnd(size=len(PHOTO)), len(PHOTO), ["end.sha256"]),
        (jobs_pb2.UploadEnd(sha256=hashlib.sha256(b"").digest()), 0, ["chunk"]),
    ],
    ids=["match", "no-end", "no-end-no-bytes", "size", "digest", "hex-digest", "no-digest", "empty-photo"],
)
def test_end_must_announce_the_size_and_digest_of_the_bytes_received(
    end: jobs_pb2.UploadEnd | None, size: int, fields: list[str]
) -> None:
    digest = DIGEST if size else hashlib.sha256(b"").digest()
    assert [v.field for v in end_violations(end, size, digest)] == fields


async def test_a_cleanup_runs_to_its_end_however_often_the_call_is_cancelled() -> None:
    done: list[str] = []

    async def cleanup() -> None:
        await asyncio.sleep(0.05)
        done.append("cleaned")

    caller = asyncio.ensure_future(undo(cleanup()))
    for _ in range(3):  # the client's cancel, then a server shutdown, then another
        await asyncio.sleep(0.005)
        caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert done == ["cleaned"]  # the cancel was passed on only once the cleanup had finished
