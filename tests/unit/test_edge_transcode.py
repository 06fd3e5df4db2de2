"""REST ⇄ protobuf transcoding, the route table and the status mapping (pure, no servers)."""

from __future__ import annotations

import itertools
import types
from typing import Any

import grpc
import grpc.aio
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from edge import routes, status, transcode
from edge.app import PROTO_MODULES
from edge.forwarding import parse_grpc_timeout
from flickrhub.v1 import admin_pb2, jobs_pb2

FDP = descriptor_pb2.FileDescriptorProto  # a message with nested, repeated and bool fields


def builder(cls: type, body: str = "", path: tuple[str, ...] = ()) -> transcode.RequestBuilder[Any]:
    return transcode.RequestBuilder(cls, body, path)


# -- request building ----------------------------------------------------------------------------


def test_whole_body_with_the_path_field_winning() -> None:
    b = builder(jobs_pb2.CancelJobRequest, "*", ("job_id",))
    msg = b.build({"job_id": "from-path"}, b'{"job_id": "from-body", "extra": 1}', [])
    assert msg == jobs_pb2.CancelJobRequest(job_id="from-path")


def test_whole_body_ignores_the_query_string() -> None:
    b = builder(jobs_pb2.SubmitJobRequest, "*")
    msg = b.build({}, b'{"user_id": "u", "method": "m", "priority": "PRIORITY_LOW"}', [("user_id", "q")])
    assert (msg.user_id, msg.method, msg.priority) == ("u", "m", jobs_pb2.PRIORITY_LOW)


def test_whole_body_accepts_json_names_too() -> None:
    msg = builder(jobs_pb2.SubmitJobRequest, "*").build({}, b'{"userId": "u", "cacheBypass": true}', [])
    assert msg.user_id == "u"
    assert msg.cache_bypass


def test_empty_body_is_fine_when_the_path_binds_every_field() -> None:
    b = builder(jobs_pb2.CancelJobRequest, "*", ("job_id",))
    assert not b.body_required
    assert b.build({"job_id": "j"}, None, []).job_id == "j"
    assert b.build({"job_id": "j"}, b"", []).job_id == "j"


def test_empty_body_is_refused_when_only_the_body_can_set_fields() -> None:
    b = builder(jobs_pb2.SubmitJobRequest, "*")
    assert b.body_required
    with pytest.raises(transcode.TranscodeError, match="body is required"):
        b.build({}, b"", [])


def test_named_body_field_takes_the_whole_json_value() -> None:
    b = builder(jobs_pb2.SubmitJobRequest, "meta")
    msg = b.build({}, b'{"a": 1, "b": [true]}', [("user_id", "u"), ("meta.a", "ignored")])
    assert msg.user_id == "u"
    assert dict(msg.meta) == {"a": 1.0, "b": [True]}
    scalar = builder(jobs_pb2.SubmitJobRequest, "user_id").build({}, b'"u9"', [])
    assert scalar.user_id == "u9"
    assert not builder(jobs_pb2.SubmitJobRequest, "meta").body_required


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"null", "JSON object"),
        (b'{"user_id": 1}', "user_id"),
        (b'{"params": {"a": 1}}', "params"),
        (b'{"cache_bypass": "yes"}', "cache_bypass"),
    ],
)
def test_bad_json_bodies_are_refused(raw: bytes, fragment: str) -> None:
    with pytest.raises(transcode.TranscodeError, match=fragment):
        builder(jobs_pb2.SubmitJobRequest, "*").build({}, raw, [])


def test_a_body_on_a_method_without_body_is_refused() -> None:
    b = builder(jobs_pb2.GetJobRequest, "", ("job_id",))
    assert not b.accepts_body
    with pytest.raises(transcode.TranscodeError, match="no request body"):
        b.build({"job_id": "j"}, b"{}", [])


def test_query_scalars_enums_and_numbers() -> None:
    b = builder(jobs_pb2.ListJobsRequest)
    query = [("user_id", "u"), ("state", "JOB_STATE_FAILED"), ("page_size", "7"), ("unknown", "x")]
    msg = b.build({}, None, query)
    assert msg == jobs_pb2.ListJobsRequest(user_id="u", state=jobs_pb2.JOB_STATE_FAILED, page_size=7)
    assert b.build({}, None, [("state", "4")]).state == jobs_pb2.JOB_STATE_COMPLETED
    window = b.build({}, None, [("created_after", "2026-11-29T07:00:00Z"), ("client_id", "k1")])
    assert window.created_after.ToJsonString() == "2026-11-29T07:00:00Z" and window.client_id == "k1"
    # the resolved key is cached: a second request takes the same path
    assert b.build({}, None, [("user_id", "v")]).user_id == "v"


def test_query_nested_and_repeated_fields() -> None:
    query = [
        ("options.java_package", "p"),
        ("options.java_multiple_files", "true"),
        ("dependency", "a.proto"),
        ("dependency", "b.proto"),
        ("public_dependency", "1"),
        ("public_dependency", "2"),
        ("message_type.name", "through-a-repeated-message-is-ignored"),
        ("options.nope", "ignored"),
        ("name.deeper", "ignored"),
    ]
    msg = builder(FDP).build({}, None, query)
    assert msg.options.java_package == "p"
    assert msg.options.java_multiple_files is True
    assert list(msg.dependency) == ["a.proto", "b.proto"]
    assert list(msg.public_dependency) == [1, 2]
    assert not msg.message_type


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ([("user_id", "a"), ("user_id", "b")], "more than once"),
        ([("page_size", "many")], "page_size"),
        ([("page_size", "99999999999")], "page_size"),
    ],
)
def test_bad_query_values_are_refused(query: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(transcode.TranscodeError, match=fragment):
        builder(jobs_pb2.ListJobsRequest).build({}, None, query)


@pytest.mark.parametrize(
    "query",
    [
        [("options.java_multiple_files", "yes")],
        [("options", "x"), ("options.java_package", "p")],
        [("options.java_package", "p"), ("options", "x")],
        [("public_dependency", "x")],
    ],
)
def test_conflicting_or_malformed_nested_query_is_refused(query: list[tuple[str, str]]) -> None:
    with pytest.raises(transcode.TranscodeError):
        builder(FDP).build({}, None, query)


def test_map_fields_cannot_come_from_the_query() -> None:
    with pytest.raises(transcode.TranscodeError, match="map"):
        builder(jobs_pb2.SubmitJobRequest).build({}, None, [("params", "x")])


def test_path_and_body_fields_are_not_taken_from_the_query() -> None:
    b = builder(jobs_pb2.SubmitJobRequest, "meta", ("user_id",))
    msg = b.build({"user_id": "path"}, None, [("user_id", "query"), ("meta", "x"), ("method", "m")])
    assert (msg.user_id, msg.method) == ("path", "m")


def test_non_string_and_nested_path_variables_are_converted() -> None:
    msg = builder(jobs_pb2.ListJobsRequest, "", ("page_size",)).build({"page_size": "5"}, None, [])
    assert msg.page_size == 5
    with pytest.raises(transcode.TranscodeError):
        builder(jobs_pb2.ListJobsRequest, "", ("page_size",)).build({"page_size": "x"}, None, [])
    nested = builder(FDP, "", ("options.java_package", "options.java_multiple_files"))
    msg2 = nested.build({"options.java_package": "a/b", "options.java_multiple_files": "1"}, None, [])
    assert msg2.options.java_package == "a/b"
    assert msg2.options.java_multiple_files


# -- responses -----------------------------------------------------------------------------------


def test_responses_use_proto_names_enum_names_and_print_unpopulated_scalars() -> None:
    job = jobs_pb2.Job(job_id="j", state=jobs_pb2.JOB_STATE_QUEUED, params={"a": "1"})
    out = transcode.message_to_dict(job)
    assert out["job_id"] == "j"
    assert out["state"] == "JOB_STATE_QUEUED"
    assert out["from_cache"] is False
    assert out["max_attempts"] == 0
    assert out["callback_url"] == ""
    assert "result" not in out
    assert "created_at" not in out


def test_response_body_selects_one_field() -> None:
    reply = jobs_pb2.ListJobsResponse(jobs=[jobs_pb2.Job(job_id="j")], next_page_token="n")
    assert transcode.response_json(reply, "next_page_token") == b'"n"'
    assert transcode.response_json(reply).startswith(b'{"jobs":[{"job_id":"j"')


def test_dumps_is_compact_utf8() -> None:
    assert transcode.dumps({"a": "ü"}) == '{"a":"ü"}'.encode()


# -- route table ---------------------------------------------------------------------------------


def test_route_table_comes_from_the_http_options() -> None:
    table = {(r.verb, r.template.source): r for r in routes.build(PROTO_MODULES)}
    assert set(table) == {
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs:batch"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}:watch"),
        ("POST", "/v1/jobs/{job_id}:cancel"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/admin/queues"),
        ("POST", "/v1/admin/cache:invalidate"),
        ("POST", "/api/v1/cache/invalidate"),
        ("POST", "/v1/auth:start"),
        ("POST", "/api/v1/auth/start"),
        ("POST", "/v1/auth:complete"),
        ("POST", "/api/v1/auth/complete"),
        ("GET", "/v1/auth/callback"),
        ("GET", "/api/v1/auth/callback"),
        ("POST", "/api/v1/flickr/rest"),
        ("POST", "/api/v1/flickr/jobs/status"),
        ("GET", "/v1/admin/tokens"),
        ("POST", "/v1/admin/tokens/{user_id}:revoke"),
        ("POST", "/v1/admin/keys"),
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys/{key_id}:rotate"),
        ("POST", "/v1/admin/keys/{key_id}:revoke"),
    }
    submit = table[("POST", "/v1/jobs")]
    assert submit.method_path == "/flickrhub.v1.JobService/SubmitJob"
    assert submit.request_cls is jobs_pb2.SubmitJobRequest
    assert submit.response_cls is jobs_pb2.SubmitJobResponse
    assert (submit.body, submit.response_body, submit.server_streaming) == ("*", "", False)
    assert submit.name == "POST /v1/jobs"
    assert table[("GET", "/v1/jobs/{job_id}:watch")].server_streaming
    assert table[("GET", "/v1/admin/queues")].response_cls is admin_pb2.QueueStats


def test_verb_templates_sort_before_plain_ones() -> None:
    order = [r.template.source for r in routes.build(PROTO_MODULES)]
    assert order.index("/v1/jobs/{job_id}:watch") < order.index("/v1/jobs/{job_id}")
    assert order.index("/v1/jobs/{job_id}:cancel") < order.index("/v1/jobs/{job_id}")


_counter = itertools.count()


def _module(
    rules: list[http_pb2.HttpRule | None], *, client_streaming: bool = False
) -> types.SimpleNamespace:
    """A proto file in the default pool with one service whose methods carry `rules`."""
    n = next(_counter)
    fdp = FDP(name=f"edge_test_{n}.proto", package=f"edgetest{n}", syntax="proto3")
    fdp.dependency.append("google/api/annotations.proto")
    req = fdp.message_type.add(name="Req")
    req.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    req.field.add(
        name="sub",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=f".edgetest{n}.Req",
    )
    req.field.add(
        name="tags",
        number=3,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    service = fdp.service.add(name="Svc")
    for i, rule in enumerate(rules):
        method = service.method.add(
            name=f"M{i}", input_type=f".edgetest{n}.Req", output_type=f".edgetest{n}.Req"
        )
        method.client_streaming = client_streaming
        if rule is not None:
            method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool = descriptor_pool.Default()
    pool.Add(fdp)
    return types.SimpleNamespace(DESCRIPTOR=pool.FindFileByName(fdp.name))


def test_custom_verbs_additional_bindings_and_response_body() -> None:
    rule = http_pb2.HttpRule(get="/a/{id}", response_body="tags")
    rule.additional_bindings.add(post="/b", body="sub")
    custom = http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="head", path="/c/{sub.id}"))
    table = routes.build([_module([rule, custom, None])])
    by_name = {r.name: r for r in table}
    assert set(by_name) == {"GET /a/{id}", "POST /b", "HEAD /c/{sub.id}"}
    assert by_name["GET /a/{id}"].response_body == "tags"
    assert by_name["POST /b"].body == "sub"


@pytest.mark.parametrize(
    "rule",
    [
        http_pb2.HttpRule(get="/a/{nope}"),
        http_pb2.HttpRule(get="/a/{sub}"),
        http_pb2.HttpRule(get="/a/{tags}"),
        http_pb2.HttpRule(get="/a/{id.x}"),
        http_pb2.HttpRule(post="/a", body="nope"),
        http_pb2.HttpRule(get="/a", response_body="nope"),
        http_pb2.HttpRule(body="*"),
    ],
)
def test_rules_the_edge_cannot_serve_fail_at_start(rule: http_pb2.HttpRule) -> None:
    with pytest.raises(routes.RouteError):
        routes.build([_module([rule])])


def test_two_methods_on_one_route_fail_at_start() -> None:
    with pytest.raises(routes.RouteError, match="bound by both"):
        routes.build([_module([http_pb2.HttpRule(get="/a"), http_pb2.HttpRule(get="/a")])])


def test_client_streaming_gets_no_json_route() -> None:
    assert routes.build([_module([http_pb2.HttpRule(post="/a", body="*")], client_streaming=True)]) == []


# -- status mapping ------------------------------------------------------------------------------


GRPC_GATEWAY_TABLE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


def test_status_table_is_grpc_gateways() -> None:
    assert {code.name: status.http_status(code) for code in grpc.StatusCode} == GRPC_GATEWAY_TABLE


def _packed(msg: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)  # type: ignore[arg-type]
    return out


def _rpc_error(code: grpc.StatusCode, trailer: bytes | None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(("x-other", "1"))
    if trailer is not None:
        trailing.add("grpc-status-details-bin", trailer)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="why")


def test_rich_details_render_as_json_any_and_retry_info_sets_retry_after() -> None:
    details = [
        _packed(error_details_pb2.ErrorInfo(reason="R", domain="d")),
        _packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=1))),
        _packed(error_details_pb2.BadRequest()),
    ]
    rich = status_pb2.Status(code=8, message="why", details=details)
    err = status.from_rpc_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, rich.SerializeToString()))
    assert err.status == 429
    assert err.headers == {"Retry-After": "3"}
    assert err.body["code"] == 8
    assert err.body["message"] == "why"
    assert err.body["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R", "domain": "d"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "2.000000001s"},
        {"@type": "type.googleapis.com/google.rpc.BadRequest"},
    ]
    assert err.json().startswith(b'{"code":8,')


def test_missing_or_corrupt_details_leave_the_status_intact() -> None:
    for trailer in (None, b"\xff\xff\xff"):
        err = status.from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, trailer))
        assert (err.status, err.body) == (404, {"code": 5, "message": "why", "details": []})


def test_a_retry_info_that_does_not_unpack_sets_no_header() -> None:
    broken = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=b"\xff")
    err = status.error(grpc.StatusCode.UNAVAILABLE, "x", [broken])
    assert "Retry-After" not in err.headers


# -- grpc-timeout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5S", 5.0), ("100m", 0.1), ("2M", 120.0), ("1H", 3600.0), ("250u", 0.00025), ("7n", 7e-9)],
)
def test_grpc_timeout_values(raw: str, seconds: float) -> None:
    assert parse_grpc_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "5", "S", "5s", "123456789S", "-1S", "1.5S"])
def test_bad_grpc_timeout_values(raw: str) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        parse_grpc_timeout(raw)
