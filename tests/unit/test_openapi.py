"""The OpenAPI generator on the real protos and on a small descriptor fixture (pure: no servers)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from openapi_spec_validator import validate

from common.settings import Settings
from edge import openapi, routes
from edge.app import PROTO_MODULES, create_app
from edge.proto_comments import Comments
from flickrhub.v1 import access_pb2


def _document() -> dict[str, Any]:
    return openapi.build_document(PROTO_MODULES, title="FlickrHub API", version="test")


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{verb.upper()} {path}": op
        for path, item in document["paths"].items()
        for verb, op in item.items()
        if path not in openapi.PUBLIC_PATHS
    }


def test_document_validates_as_openapi_3() -> None:
    document = _document()
    assert document["openapi"] == "3.0.3"
    validate(document)


def test_every_http_rule_becomes_an_operation_with_a_unique_id() -> None:
    operations = _operations(_document())
    expected = {f"{r.verb} {r.template.source}" for r in routes.build(PROTO_MODULES)}
    expected |= {r.name for r in routes.upload_routes(PROTO_MODULES)}
    assert set(operations) == expected
    ids = [op["operationId"] for op in operations.values()]
    assert len(ids) == len(set(ids))
    assert operations["POST /v1/jobs"]["operationId"] == "JobService_SubmitJob"
    assert operations["POST /api/v1/auth/start"]["operationId"] == "AuthService_StartAuthorization_2"


def test_path_query_and_body_follow_the_http_rule() -> None:
    document = _document()
    watch = document["paths"]["/v1/jobs/{job_id}:watch"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in watch["parameters"]] == [("job_id", "path", True)]
    assert "application/x-ndjson" in watch["responses"]["200"]["content"]
    listing = document["paths"]["/v1/jobs"]["get"]
    query = {p["name"]: p for p in listing["parameters"] if p["in"] == "query"}
    assert set(query) == {
        "user_id",
        "state",
        "method",
        "page_size",
        "page_token",
        "created_after",
        "created_before",
        "client_id",
    }
    assert query["created_after"]["schema"]["format"] == "date-time"  # a Timestamp from the query string
    cancel = document["paths"]["/v1/jobs/{job_id}:cancel"]["post"]
    body = cancel["requestBody"]["content"]["application/json"]["schema"]
    assert "job_id" not in body["properties"]  # bound by the path
    upload = document["paths"]["/v1/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["job", "photo"]


def test_comments_become_descriptions_and_enums_are_names() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    job = schemas["flickrhub.v1.Job"]
    assert {"job_id", "user_id", "method", "params", "state", "result", "created_at"} <= set(
        job["properties"]
    )
    assert job["description"].startswith("A Flickr call handed to FlickrHub")
    assert job["properties"]["job_id"]["description"] == "Opaque job id (UUID) assigned at submission."
    assert job["properties"]["params"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Flickr method arguments.",
    }
    assert job["properties"]["created_at"]["format"] == "date-time"
    state = schemas["flickrhub.v1.JobState"]
    assert state["type"] == "string" and "JOB_STATE_COMPLETED" in state["enum"]
    assert "`JOB_STATE_QUEUED`: Accepted and waiting" in state["description"]
    submit = document["paths"]["/v1/jobs"]["post"]
    assert submit["summary"].startswith("Accept a Flickr call as a job")


def test_errors_security_and_public_paths() -> None:
    document = _document()
    responses = document["components"]["responses"]
    assert "Retry-After" in responses["Error429"]["headers"]
    assert document["components"]["schemas"]["google.rpc.Status"]["required"] == [
        "code",
        "message",
        "details",
    ]
    schemes = document["components"]["securitySchemes"]
    assert {
        "BearerApiKey",
        "ApiKeyHeader",
        "HmacKeyId",
        "HmacTimestamp",
        "HmacNonce",
        "HmacSignature",
    } == set(schemes)
    assert schemes["BearerApiKey"]["scheme"] == "bearer"
    hmac_headers = {schemes[name]["name"] for name in schemes if name.startswith("Hmac")}
    assert hmac_headers == {"x-api-key-id", "x-timestamp", "x-nonce", "x-signature"}
    # The four HMAC headers are one requirement (all together), bearer and x-api-key one each.
    assert {"HmacKeyId", "HmacTimestamp", "HmacNonce", "HmacSignature"} in [
        set(r) for r in document["security"]
    ]
    assert {"BearerApiKey"} in [set(r) for r in document["security"]]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["servers"] == [{"url": "/"}]


async def test_served_document_marks_only_the_contracts_no_credential_rpcs_as_needing_none() -> None:
    app = create_app(Settings.from_env(env={}, edge_metrics_port=-1))
    async with TestClient(TestServer(app)) as client:
        document = await (await client.get("/openapi.json")).json()
    unsecured = {
        f"{verb.upper()} {path}"
        for path, item in document["paths"].items()
        for verb, op in item.items()
        if op.get("security") == [] and path not in openapi.PUBLIC_PATHS
    }
    # AuthorizationCallback (Flickr redirects the user's browser there) and its legacy binding.
    assert unsecured == {"GET /v1/auth/callback", "GET /api/v1/auth/callback"}
    marked = {
        method.full_name
        for module in PROTO_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.GetOptions().Extensions[access_pb2.no_credential]
    }
    assert marked == {"flickrhub.v1.AuthService.AuthorizationCallback"}
    for name, op in _operations(document).items():
        if name not in unsecured:
            assert "security" not in op, name  # the document-wide requirement: a credential
            assert "401" in op["responses"], name


def _fixture_module() -> Any:
    """A tiny proto built in the test: nested, map, int64, Timestamp, recursion and an http rule."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="tests/openapi_fixture.proto",
        package="fixture.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/timestamp.proto"],
    )
    fd = descriptor_pb2.FieldDescriptorProto
    node = proto.message_type.add(name="Node")
    node.field.add(name="id", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    node.field.add(name="size", number=2, type=fd.TYPE_INT64, label=fd.LABEL_OPTIONAL)
    node.field.add(
        name="children", number=3, type=fd.TYPE_MESSAGE, type_name=".fixture.v1.Node", label=fd.LABEL_REPEATED
    )
    node.field.add(
        name="seen",
        number=4,
        type=fd.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=fd.LABEL_OPTIONAL,
    )
    node.field.add(name="tags", number=5, type=fd.TYPE_STRING, label=fd.LABEL_REPEATED)
    service = proto.service.add(name="NodeService")
    method = service.method.add(name="GetNode", input_type=".fixture.v1.Node", output_type=".fixture.v1.Node")
    method.options.Extensions[annotations_pb2.http].get = "/v1/nodes/{id}"
    location = proto.source_code_info.location.add(path=[4, 0, 2, 1], span=[0, 0, 1])
    location.leading_comments = " Bytes in the node.\n"
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
        file = pool.FindFileByName(proto.name)
    comments = Comments.from_file_set(descriptor_pb2.FileDescriptorSet(file=[proto]))
    return SimpleNamespace(DESCRIPTOR=file), comments


def test_fixture_messages_map_to_json_schemas_with_their_comments() -> None:
    module, comments = _fixture_module()
    document = openapi.build_document([module], title="t", version="1", comments=comments)
    validate(document)
    node = document["components"]["schemas"]["fixture.v1.Node"]
    assert node["properties"]["size"] == {
        "type": "string",
        "format": "int64",
        "pattern": "^-?[0-9]+$",
        "description": "Bytes in the node.",
    }
    assert node["properties"]["children"]["items"] == {"$ref": "#/components/schemas/fixture.v1.Node"}
    get = document["paths"]["/v1/nodes/{id}"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert params["id"]["in"] == "path"
    assert params["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert params["seen"]["schema"]["format"] == "date-time"
    assert "children" not in params  # repeated messages have no query form
    assert get["operationId"] == "NodeService_GetNode"
