"""The served OpenAPI document and Swagger UI, and schemathesis against the live edge and stack.

The edge runs in this test's event loop; schemathesis (synchronous `requests`)
runs in a worker thread so the loop keeps serving. Every generated input, valid
(positive) or not (negative), must get no 5xx and an answer that conforms to the
document. Credentials: when the stack helper offers `auth_headers` (a dict of
headers for a valid client), the run is repeated with them; until then the
suite has no client authentication and runs unauthenticated only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import hypothesis
import hypothesis.errors
import pytest_asyncio
import requests
import schemathesis
from aiohttp import web
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from common.settings import Settings
from edge.app import create_app
from tests.helpers.inproc import Stack, running_stack, seed_demo_token, stack_settings

# Examples per operation and generation mode: ~20 operations x 2 modes stay well under a minute.
MAX_EXAMPLES = 10
# Failures found here in code outside the OpenAPI work, by `<operation> [<mode>]`, with where they are.
# Remove an entry once its fix lands (a listed operation/mode hides any other failure of that pair).
KNOWN_BUGS: dict[str, str] = {}
_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest_asyncio.fixture
async def live(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any, cache_redis: Any
) -> AsyncIterator[tuple[Stack, str]]:
    settings = stack_settings(redis_url, cache_redis_url, mongo_url, mongo_db_name)
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        edge_settings = Settings.from_env(
            env={}, **{**stack.settings.__dict__, "gateway_addr": f"127.0.0.1:{stack.gateway.port}"}
        )
        runner = web.AppRunner(create_app(edge_settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield stack, f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def test_openapi_json_is_a_valid_document_and_the_same_on_every_call(live: tuple[Stack, str]) -> None:
    _, edge = live
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge}/openapi.json") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            first = await resp.read()
            etag = resp.headers["ETag"]
        async with http.get(f"{edge}/openapi.json") as resp:
            assert await resp.read() == first
        async with http.get(f"{edge}/openapi.json", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
        async with http.get(f"{edge}/openapi.json") as resp:
            document = await resp.json()
    validate(document)
    assert "/v1/jobs/{job_id}:watch" in document["paths"]


async def test_docs_page_and_its_assets_are_served_from_this_origin(live: tuple[Stack, str]) -> None:
    _, edge = live
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge}/docs") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            html = await resp.text()
        references = [a or b for a, b in _URL.findall(html)]
        assert any(r.endswith("swagger-ui-bundle.js") for r in references)
        init = next(r for r in references if r.endswith("flickrhub-docs.js"))
        async with http.get(f"{edge}/{init}") as resp:
            assert resp.status == 200
            script = await resp.text()
        references += [a or b for a, b in _URL.findall(script)]
        assert "openapi.json" in references
        for ref in references:
            assert "://" not in ref and not ref.startswith("//"), f"{ref} is not same-origin"
            async with http.get(f"{edge}/{ref}") as resp:
                assert resp.status == 200, ref
                assert await resp.read()
        assert "https://" not in html + script and "http://" not in html + script
        async with http.get(f"{edge}/docs/static/swagger-ui-bundle.js") as resp:
            assert resp.content_type == "text/javascript"
        async with http.get(f"{edge}/docs/static/index.html") as resp:
            assert resp.status == 404  # the package's sample page points at the public petstore


def _fuzz(document: dict[str, Any], base_url: str, headers: dict[str, str]) -> dict[str, str]:
    """Run every operation with positive and negative inputs; the failures by `<operation> [<mode>]`."""
    schema = schemathesis.openapi.from_dict(document)
    checks = [not_a_server_error, response_schema_conformance]
    failures: dict[str, str] = {}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                failures[f"schema [{result.err()}]"] = "schemathesis cannot load an operation"
                continue
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @hypothesis.settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(hypothesis.HealthCheck),
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def run(case: schemathesis.Case[Any]) -> None:
                    case.call_and_validate(
                        base_url=base_url, session=session, headers=headers, checks=checks, timeout=10
                    )

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    continue  # no invalid input exists (an operation without parameters or body)
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a Base…
                    failures[f"{operation.label} [{mode.value}]"] = str(exc)
    return failures


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(live: tuple[Stack, str]) -> None:
    stack, edge = live
    async with aiohttp.ClientSession() as http, http.get(f"{edge}/openapi.json") as resp:
        document = await resp.json()
    runs: list[dict[str, str]] = [{}]
    credentials = getattr(stack, "auth_headers", None)  # offered by the stack once clients authenticate
    if credentials:
        runs.append(dict(credentials))
    for headers in runs:
        failures = await asyncio.to_thread(_fuzz, document, edge, headers)
        unexpected = {k: v for k, v in failures.items() if k not in KNOWN_BUGS}
        assert not unexpected, "\n\n".join(f"{k}: {v}" for k, v in unexpected.items())
