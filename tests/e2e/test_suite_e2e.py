"""The README's promise, end to end over real processes: submit over gRPC and REST, poll, watch, webhook."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import pytest

from devstack.seed import DEMO_USER
from devstack.stack import ProcessStack
from flickrhub.v1 import jobs_pb2
from tests.e2e.helpers import add_fault, auth_headers, edge_url, grpc_stub, wait_final_grpc, wait_final_rest
from tests.e2e.webhook_receiver import Receiver
from tests.helpers.rich import result_of
from worker import webhook_signature as webhook

pytestmark = pytest.mark.e2e


async def test_same_call_over_grpc_and_rest_completes_the_same_way(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
        submitted = await stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(user_id=DEMO_USER, method="flickr.test.echo", params={"via": "grpc"})
        )
        over_grpc = await wait_final_grpc(stub, submitted.job_id)
        body = {"user_id": DEMO_USER, "method": "flickr.test.echo", "params": {"via": "rest"}}
        async with http.post(edge_url(stack, "/v1/jobs"), json=body) as resp:
            assert resp.status == 200, await resp.text()
            rest_job_id = (await resp.json())["job_id"]
        over_rest = await wait_final_rest(http, stack, rest_job_id)
    assert over_grpc.state == jobs_pb2.JOB_STATE_COMPLETED
    assert result_of(over_grpc)["via"]["_content"] == "grpc"
    assert over_rest["state"] == "JOB_STATE_COMPLETED"
    assert over_rest["result"]["via"]["_content"] == "rest"
    assert over_rest["trace_id"] and over_grpc.trace_id


async def test_rest_errors_match_grpc_errors(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(user_id="nobody", method="flickr.test.echo"))
        async with http.post(
            edge_url(stack, "/v1/jobs"), json={"user_id": "nobody", "method": "flickr.test.echo"}
        ) as resp:
            rest = await resp.json()
            status = resp.status
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert status == 404
    assert rest["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert rest["message"] == err.value.details()


async def test_watch_streams_every_state_and_ends_at_the_final_one(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
        await add_fault(http, stack, method="flickr.people.getInfo", kind="latency", latency_ms=600, times=1)
        job = await stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER, method="flickr.people.getInfo", params={"user_id": "10000001@N00"}
            )
        )
        states = [
            u.state async for u in stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.job_id), timeout=30)
        ]
        async with http.get(edge_url(stack, f"/v1/jobs/{job.job_id}:watch")) as resp:
            assert resp.status == 200
            lines = [json.loads(line) for line in (await resp.text()).splitlines() if line.strip()]
    assert states[-1] == jobs_pb2.JOB_STATE_COMPLETED
    assert jobs_pb2.JOB_STATE_RUNNING in states
    assert [line["result"]["state"] for line in lines] == ["JOB_STATE_COMPLETED"]


async def test_webhook_is_signed_retried_and_carries_meta_untouched(stack: ProcessStack) -> None:
    receiver = await Receiver(fail_first=1).start()
    secret = "a-webhook-secret-of-some-length"
    meta = {"order": 42, "tags": ["a", "b"], "nested": {"ok": True, "none": None}}
    try:
        async with aiohttp.ClientSession(headers=auth_headers(stack)) as http:
            body = {
                "user_id": DEMO_USER,
                "method": "flickr.test.echo",
                "params": {"x": "1"},
                "callback_url": receiver.url,
                "callback_secret": secret,
                "meta": meta,
            }
            async with http.post(edge_url(stack, "/v1/jobs"), json=body) as resp:
                job_id = (await resp.json())["job_id"]
            deliveries = await receiver.wait_for(job_id)
    finally:
        await receiver.stop()
    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert webhook.verify(delivery.body, secret, delivery.headers[webhook.SIGNATURE_HEADER])
    assert not webhook.verify(
        delivery.body, "another-secret-entirely", delivery.headers[webhook.SIGNATURE_HEADER]
    )
    payload = delivery.payload
    assert payload["meta"] == meta
    assert payload["state"] == "completed"
    assert payload["result"]["x"]["_content"] == "1"
    assert set(payload) >= {
        "job_id",
        "user_id",
        "target",
        "state",
        "result",
        "error",
        "from_cache",
        "attempts",
        "timestamp",
        "trace_id",
        "meta",
    }
    assert secret not in delivery.body.decode()
    assert receiver.attempts == 2


async def test_flickr_refusal_fails_at_once_with_flickrs_code(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel:
        job = await stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER, method="flickr.people.getInfo", params={"user_id": "0@N00"}
            )
        )
        done = await wait_final_grpc(stub, job.job_id)
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert done.error.flickr_code == 1
    assert done.error.code == "FLICKR_ERROR"
    assert done.attempts == 1


async def test_rate_limited_call_is_retried_with_backoff_then_completes(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel, aiohttp.ClientSession(headers=auth_headers(stack)) as http:
        await add_fault(http, stack, method="flickr.photos.getSizes", kind="http_status", status=429, times=2)
        job = await stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                user_id=DEMO_USER, method="flickr.photos.getSizes", params={"photo_id": "777"}
            )
        )
        done = await wait_final_grpc(stub, job.job_id)
    assert done.state == jobs_pb2.JOB_STATE_COMPLETED, done.error
    assert done.attempts == 3


async def test_many_jobs_all_complete(stack: ProcessStack) -> None:
    channel, stub = grpc_stub(stack)
    async with channel:
        submitted = await asyncio.gather(
            *(
                stub.SubmitJob(
                    jobs_pb2.SubmitJobRequest(
                        user_id=DEMO_USER, method="flickr.test.echo", params={"n": str(i)}
                    )
                )
                for i in range(100)
            )
        )
        done = await asyncio.gather(*(wait_final_grpc(stub, s.job_id, timeout=60) for s in submitted))
    assert {d.state for d in done} == {jobs_pb2.JOB_STATE_COMPLETED}
    assert sorted(int(result_of(d)["n"]["_content"]) for d in done) == list(range(100))
