"""SubmitJob validation reports every bad field and accepts what Flickr accepts."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from common.errors import InvalidArgument
from flickrhub.v1 import jobs_pb2
from gateway import validation


def _req(**kw: object) -> jobs_pb2.SubmitJobRequest:
    base: dict[str, object] = {"user_id": "u-1", "method": "flickr.photos.search"}
    base.update(kw)
    return jobs_pb2.SubmitJobRequest(**base)  # type: ignore[arg-type]


def fields_of(req: jobs_pb2.SubmitJobRequest) -> set[str]:
    return {v.field for v in validation.submit_violations(req)}


def test_a_plain_read_is_valid() -> None:
    validation.validate_submit(_req(params={"text": "sunset", "per_page": "5"}))


@pytest.mark.parametrize(
    "method",
    ["flickr.test.echo", "flickr.photos.upload.checkTickets", "flickr.auth.oauth.checkToken"],
)
def test_flickr_method_names_are_accepted(method: str) -> None:
    assert "method" not in fields_of(_req(method=method))


@pytest.mark.parametrize(
    "method",
    ["", "photos.search", "flickr.search", "flickr..x", "flickr.photos.search;drop", "FLICKR.photos.search"],
)
def test_malformed_method_names_are_refused(method: str) -> None:
    assert "method" in fields_of(_req(method=method))


def test_every_bad_field_is_reported_at_once() -> None:
    req = _req(user_id="", method="nope", target=9, priority=7, callback_secret="x")
    assert fields_of(req) == {"user_id", "method", "target", "priority", "callback_secret"}
    with pytest.raises(InvalidArgument) as err:
        validation.validate_submit(req)
    assert len(err.value.violations) == 5


def test_params_are_bounded() -> None:
    too_many = {f"p{i}": "v" for i in range(validation.MAX_PARAMS + 1)}
    assert "params" in fields_of(_req(params=too_many))
    assert "params[text]" in fields_of(_req(params={"text": "x" * (validation.MAX_PARAM_VALUE + 1)}))
    assert "params[bad key]" in fields_of(_req(params={"bad key": "v"}))


@pytest.mark.parametrize("key", ["oauth_token", "api_key", "format", "method", "nojsoncallback"])
def test_parameters_flickrhub_sets_itself_are_reserved(key: str) -> None:
    assert f"params[{key}]" in fields_of(_req(params={key: "x"}))


def test_callback_needs_http_url_and_a_real_secret() -> None:
    assert fields_of(_req(callback_url="ftp://x/y", callback_secret="s" * 20)) == {"callback_url"}
    assert fields_of(_req(callback_url="https://example.com/hook", callback_secret="short")) == {
        "callback_secret"
    }
    assert fields_of(_req(callback_url="https://example.com/hook", callback_secret="s" * 20)) == set()
    assert fields_of(_req(callback_secret="s" * 20)) == {"callback_secret"}


def test_meta_is_bounded() -> None:
    meta = struct_pb2.Struct()
    meta.update({"blob": "x" * (validation.MAX_META_BYTES + 10)})
    assert "meta" in fields_of(_req(meta=meta))
    small = struct_pb2.Struct()
    small.update({"order": 1})
    assert validation.meta_json(_req(meta=small)) == '{"order":1.0}'
    assert validation.meta_json(_req()) == ""


def test_idempotency_key_is_bounded_and_printable() -> None:
    assert "idempotency_key" in fields_of(_req(idempotency_key="k" * 200))
    assert "idempotency_key" in fields_of(_req(idempotency_key="a\nb"))
    assert "idempotency_key" not in fields_of(_req(idempotency_key="order-42"))


def test_job_ids_have_our_form() -> None:
    validation.validate_job_id("0" * 32)
    with pytest.raises(InvalidArgument):
        validation.validate_job_id("../etc/passwd")
