"""The examples in docs/api/ run against a live stack, so the documentation cannot rot.

A fenced block is an example to run when its info string carries the word `run`
after the language (GitHub shows only the language):

    ```bash run needs=job expect="JOB_STATE_COMPLETED"
    curl -sS --fail-with-body "$FLICKRHUB_URL/v1/jobs/$JOB_ID" -H "Authorization: Bearer $FLICKRHUB_API_KEY"
    ```

- languages: `bash` (curl, openssl), `python` (this venv's interpreter: requests and
  aiohttp are installed), `js` (Node 18+, run as an ES module; skipped without `node`);
- `expect=TEXT`: stdout must contain TEXT (besides exit code 0);
- `needs=a,b`: what the test prepares first, given as environment variables
  (docs/api/README.md lists them for readers): `job` ($JOB_ID of a completed job),
  `retrying-job` ($JOB_ID of a job waiting for its retry, so it can be cancelled),
  `spare-key` ($KEY_ID of a throwaway API key), `spare-user` ($USER_ID of a throwaway
  user with a token), `verifier` ($REQUEST_TOKEN and $VERIFIER of an approved OAuth
  request), `photo` ($PHOTO, a JPEG file), `delivery` ($WEBHOOK_BODY, a file with a
  webhook body as delivered, $WEBHOOK_SIGNATURE its header, $WEBHOOK_SECRET);
- `serve`: the example is a webhook receiver listening on $PORT (secret $WEBHOOK_SECRET);
  the test submits a job whose callback_url points at it and waits for `expect` in
  its output, then stops it.

Always present: $FLICKRHUB_URL, $FLICKRHUB_API_KEY (a client key bound to demo-user),
$FLICKRHUB_ADMIN_KEY, $FLICKRHUB_KEY_ID and $FLICKRHUB_SIGNING_SECRET (the client
key's HMAC pair). A second test checks that every REST route appears in a runnable
example of each language.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from common.settings import Settings
from devstack.procs import free_port
from devstack.seed import DEMO_USER
from edge import app as edge_app
from edge import routes
from flickrhub.v1 import auth_pb2, auth_pb2_grpc, jobs_pb2, keys_pb2, keys_pb2_grpc
from tests.helpers.flickr_approve import decide
from tests.helpers.inproc import Stack, running_stack, seed_demo_token, stack_settings
from worker import webhook_signature as webhook

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"
LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python", "js": "node", "javascript": "node"}
NEEDS = {"job", "retrying-job", "spare-key", "spare-user", "verifier", "photo", "delivery"}
EXAMPLE_TIMEOUT_S = 20.0
# Jobs of this method fail transiently at the sandbox (planned fault), so they wait in RETRYING
# for the long backoff below: the cancel examples need a job that can still be cancelled.
PARKED_METHOD = "flickr.photos.getRecent"
WEBHOOK_SECRET = "docs-example-webhook-secret"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8
# Routes documented from the contract whose implementation is still being built elsewhere, with
# why: their examples may fail without failing this test (and must, once they pass, leave this).
PENDING: dict[str, str] = {}
_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
FINAL = {jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


@dataclass(frozen=True)
class Example:
    """One runnable fenced block."""

    path: Path
    line: int
    language: str  # bash, python or node
    code: str
    needs: frozenset[str] = frozenset()
    expect: str = ""
    serve: bool = False

    @property
    def where(self) -> str:
        """`file.md:line` for messages."""
        return f"{self.path.name}:{self.line}"


def parse_examples(path: Path) -> list[Example]:
    """The runnable blocks of one markdown file, in order."""
    text = path.read_text()
    found = []
    for fence in _FENCE.finditer(text):
        words = shlex.split(fence.group("info"))
        if len(words) < 2 or words[1] != "run":
            continue
        language = LANGUAGES.get(words[0])
        line = text.count("\n", 0, fence.start()) + 1
        assert language, f"{path.name}:{line}: cannot run a `{words[0]}` block"
        attrs: dict[str, str] = {}
        for word in words[2:]:
            name, _, value = word.partition("=")
            attrs[name] = value
        needs = frozenset(n for n in attrs.get("needs", "").split(",") if n)
        assert needs <= NEEDS, f"{path.name}:{line}: unknown needs {sorted(needs - NEEDS)}"
        assert set(attrs) <= {"needs", "expect", "serve"}, f"{path.name}:{line}: unknown {sorted(attrs)}"
        code, expect = fence.group("code"), attrs.get("expect", "")
        found.append(Example(path, line, language, code, needs, expect, "serve" in attrs))
    return found


def all_examples() -> list[Example]:
    """Every runnable block of docs/api/*.md."""
    return [e for path in sorted(DOCS.glob("*.md")) for e in parse_examples(path)]


def _route_pattern(template: str) -> re.Pattern[str]:
    """A regex finding a route's path in example code, whatever the language's variable syntax."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile(r"[^/\s\"'`?:]+".join(re.escape(p) for p in parts) + r"(?![\w/:])")


_REVOKE_KEY = _route_pattern("/v1/admin/keys/{key_id}:revoke")


def test_every_rest_route_has_a_runnable_example_in_curl_python_and_node() -> None:
    templates = {r.template.source for r in routes.build(edge_app.PROTO_MODULES)}
    templates |= {r.path for r in routes.upload_routes(edge_app.PROTO_MODULES)}
    examples = all_examples()
    missing = []
    for template in sorted(templates):
        pattern = _route_pattern(template)
        for language in ("bash", "python", "node"):
            if not any(e.language == language and pattern.search(e.code) for e in examples):
                missing.append(f"{template} ({language})")
    assert not missing, "routes without a runnable example: " + ", ".join(missing)


# -- the live run ---------------------------------------------------------------------------------


@dataclass
class Live:
    """The running stack, its edge, and what examples get in their environment."""

    stack: Stack
    url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    # One throwaway key serves every rotate example (each bcrypt-hashes a new secret, ~0.3 s+);
    # a revoke example uses it up.
    spare_key: str = ""


@pytest_asyncio.fixture
async def live(
    redis_url: str, cache_redis_url: str, mongo_url: str, mongo_db_name: str, redis: Any, cache_redis: Any
) -> AsyncIterator[Live]:
    settings = stack_settings(
        redis_url,
        cache_redis_url,
        mongo_url,
        mongo_db_name,
        worker_backoff_base_s=60.0,
        worker_backoff_max_s=60.0,
    )
    await seed_demo_token(settings)
    async with running_stack(settings) as stack:
        stack.sandbox.add_fault(method=PARKED_METHOD, kind="flickr_error", code=105, times=-1)
        # The edge dials the gateway itself: no credentials but the ones the examples send.
        edge_settings = Settings.from_env(
            env={}, **{**stack.settings.__dict__, "gateway_addr": f"127.0.0.1:{stack.gateway.port}"}
        )
        runner = web.AppRunner(edge_app.create_app(edge_settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert stack.keys is not None
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            with tempfile.TemporaryDirectory(prefix="flickrhub-docs-") as tmp:
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": tmp,
                    "LANG": "C.UTF-8",
                    "FLICKRHUB_URL": url,
                    "FLICKRHUB_API_KEY": stack.keys.client_key,
                    "FLICKRHUB_ADMIN_KEY": stack.keys.admin_key,
                    "FLICKRHUB_KEY_ID": stack.keys.client_key_id,
                    "FLICKRHUB_SIGNING_SECRET": stack.keys.client_signing_secret,
                }
                yield Live(stack, url, Path(tmp), env)
        finally:
            await runner.cleanup()


async def _wait_state(
    stack: Stack, job_id: str, wanted: set[jobs_pb2.JobState.ValueType], timeout: float = 15.0
) -> jobs_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await stack.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.state in wanted:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}")
        await asyncio.sleep(0.05)


async def _submit(live: Live, method: str, **fields: Any) -> str:
    # Submitted with the client key the examples present: a client sees only the jobs it submitted.
    assert live.stack.keys is not None
    reply = await live.stack.jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method=method, **fields),
        metadata=(("authorization", f"Bearer {live.stack.keys.client_key}"),),
    )
    return reply.job_id


async def _prepare(live: Live, example: Example, http: aiohttp.ClientSession) -> dict[str, str]:
    """The environment variables an example's `needs` ask for."""
    env: dict[str, str] = {}
    stack = live.stack
    if "job" in example.needs:
        job_id = await _submit(live, "flickr.test.echo", params={"hello": "world"})
        await _wait_state(stack, job_id, FINAL)
        env["JOB_ID"] = job_id
    if "retrying-job" in example.needs:
        job_id = await _submit(live, PARKED_METHOD)
        await _wait_state(stack, job_id, {jobs_pb2.JOB_STATE_RETRYING})
        env["JOB_ID"] = job_id
    if "spare-key" in example.needs:
        if not live.spare_key:
            created = await keys_pb2_grpc.ApiKeyServiceStub(stack.channel).CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name="docs example", user_ids=[DEMO_USER])
            )
            live.spare_key = created.key.key_id
        env["KEY_ID"] = live.spare_key
        if _REVOKE_KEY.search(example.code):
            live.spare_key = ""
    if "spare-user" in example.needs:
        user_id = f"docs-{uuid.uuid4().hex[:8]}"
        await seed_demo_token(stack.settings, user_id)
        env["USER_ID"] = user_id
    if "verifier" in example.needs:
        started = await auth_pb2_grpc.AuthServiceStub(stack.channel).StartAuthorization(
            auth_pb2.StartAuthorizationRequest(perms="write")
        )
        approval = await decide(http, started.authorize_url)
        assert approval.verifier, approval.text
        env["REQUEST_TOKEN"] = started.request_token
        env["VERIFIER"] = approval.verifier
    if "photo" in example.needs:
        photo = live.workdir / "sunset.jpg"
        photo.write_bytes(JPEG)
        env["PHOTO"] = str(photo)
    if "delivery" in example.needs:
        env.update(await _captured_delivery(live))
    return env


async def _captured_delivery(live: Live) -> dict[str, str]:
    """A real webhook delivery, caught by a bare receiver: body file, signature header and secret."""
    got: asyncio.Future[tuple[bytes, str]] = asyncio.get_running_loop().create_future()

    async def receive(request: web.Request) -> web.Response:
        if not got.done():
            got.set_result((await request.read(), request.headers[webhook.SIGNATURE_HEADER]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        await _submit(
            live,
            "flickr.test.echo",
            callback_url=f"http://127.0.0.1:{port}/hook",
            callback_secret=WEBHOOK_SECRET,
        )
        body, header = await asyncio.wait_for(got, 15)
    finally:
        await runner.cleanup()
    body_file = live.workdir / "webhook-body.json"
    body_file.write_bytes(body)
    return {"WEBHOOK_BODY": str(body_file), "WEBHOOK_SIGNATURE": header, "WEBHOOK_SECRET": WEBHOOK_SECRET}


def _command(example: Example, workdir: Path, index: int) -> list[str]:
    suffix = {"bash": ".sh", "python": ".py", "node": ".mjs"}[example.language]
    script = workdir / f"example-{index}{suffix}"
    script.write_text(example.code)
    if example.language == "bash":
        return ["bash", "-e", "-o", "pipefail", str(script)]
    if example.language == "python":
        return [sys.executable, str(script)]
    return ["node", str(script)]


async def _run(live: Live, example: Example, env: dict[str, str], index: int) -> str | None:
    """None when the example did what it should, else what went wrong."""
    process = await asyncio.create_subprocess_exec(
        *_command(example, live.workdir, index),
        cwd=live.workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), EXAMPLE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"timed out after {EXAMPLE_TIMEOUT_S:.0f} s"
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if process.returncode != 0:
        return f"exit {process.returncode}\nstdout: {stdout[-1500:]}\nstderr: {stderr[-1500:]}"
    if example.expect not in stdout:
        return f"{example.expect!r} not in stdout: {stdout[-1500:]}\nstderr: {stderr[-800:]}"
    return None


async def _serve(live: Live, example: Example, env: dict[str, str], index: int) -> str | None:
    """Run a receiver example, send it a real webhook, and wait for `expect` in its output."""
    port = free_port()
    env = {**env, "PORT": str(port), "WEBHOOK_SECRET": WEBHOOK_SECRET}
    process = await asyncio.create_subprocess_exec(
        *_command(example, live.workdir, index),
        cwd=live.workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    output = ""
    try:
        async with asyncio.timeout(EXAMPLE_TIMEOUT_S):
            while True:  # until it listens
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                if process.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            await _submit(
                live,
                "flickr.test.echo",
                params={"hello": "webhook"},
                callback_url=f"http://127.0.0.1:{port}/flickrhub-webhook",
                callback_secret=WEBHOOK_SECRET,
            )
            while example.expect not in output:
                line = await process.stdout.readline()
                if not line:
                    break
                output += line.decode(errors="replace")
    except TimeoutError:
        pass
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
    if example.expect in output:
        return None
    stderr = (await process.stderr.read()).decode(errors="replace")
    return f"{example.expect!r} not in output: {output[-1500:]}\nstderr: {stderr[-1500:]}"


async def test_docs_examples_run_against_a_live_suite(live: Live) -> None:
    examples = all_examples()
    assert examples, f"no runnable examples in {DOCS}"
    node = shutil.which("node")
    failures = []
    ran = 0
    async with aiohttp.ClientSession() as http:
        for index, example in enumerate(examples):
            if example.language == "node" and node is None:
                continue
            env = {**live.env, **await _prepare(live, example, http)}
            if example.serve:
                problem = await _serve(live, example, env, index)
            else:
                problem = await _run(live, example, env, index)
            ran += 1
            pending = [p for p in PENDING if _route_pattern(p).search(example.code)]
            if pending and not problem:
                failures.append(f"{example.where}: passes now; remove {pending} from PENDING")
            elif problem and not pending:
                failures.append(f"{example.where} ({example.language}): {problem}")
    assert not failures, f"{len(failures)} of {ran} examples failed:\n\n" + "\n\n".join(failures)


@pytest.mark.parametrize(
    ("template", "code", "found"),
    [
        ("/v1/jobs/{job_id}:cancel", 'f"{BASE}/v1/jobs/{job_id}:cancel"', True),
        ("/v1/jobs/{job_id}:cancel", "`${base}/v1/jobs/${jobId}:cancel`", True),
        ("/v1/jobs/{job_id}", '"$FLICKRHUB_URL/v1/jobs/$JOB_ID:watch"', False),
        ("/v1/jobs", '"$FLICKRHUB_URL/v1/jobs?user_id=demo-user"', True),
        ("/v1/jobs", '"$FLICKRHUB_URL/v1/jobs/$JOB_ID"', False),
    ],
)
def test_route_patterns_tell_routes_apart(template: str, code: str, found: bool) -> None:
    assert bool(_route_pattern(template).search(code)) is found
