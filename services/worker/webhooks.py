"""Webhook delivery: a signed JSON POST when a job reaches a final state, retried with backoff.

Deliveries come from the `fh:hooks` stream (queued in the same round trip as
the final state's announcement), so a worker crash mid-delivery hands the
delivery to another worker instead of losing it. Receivers verify
`X-FlickrHub-Signature: sha256=<hex HMAC-SHA256 of the body under callback_secret>`
and should deduplicate on (job_id, state): delivery is at least once.

Before every attempt the URL's host is resolved and checked again (`common.urlguard`),
and the POST connects to exactly the checked addresses (a pinned resolver), so a
host that turned private after submission (DNS rebinding) is refused, not called.

One job's webhook may be queued twice (a worker that died between queuing it and acknowledging
the job's entry leaves the entry to another, which queues it again when no delivery is recorded
yet). A delivery lease in Redis (`keys.webhook_lease`, SET NX) lets only one of them POST; the
other is dropped, because the holder's own entry stays pending until the outcome is recorded, and
a dead holder's entry is taken over only after the lease (shorter than the stream's visibility
timeout) has run out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
from redis.asyncio import Redis

from common import keys, legacy, telemetry, urlguard
from common.jobstore import JobStore
from common.mongo import Doc
from common.vault import Vault
from worker import backoff, metrics
from worker import webhook_signature as webhook

log = logging.getLogger(__name__)

CALLBACK_PURPOSE = "callback-secret"


def payload(doc: Doc) -> dict[str, Any]:
    """The JSON a receiver gets: the original API's fields for jobs submitted through its routes."""
    if legacy.is_legacy(doc):
        return legacy.webhook_payload(doc)
    return v1_payload(doc)


def v1_payload(doc: Doc) -> dict[str, Any]:
    """The v1 webhook JSON (the secret never appears)."""
    result = json.loads(doc["result_json"]) if doc.get("result_json") else None
    meta = json.loads(doc["meta_json"]) if doc.get("meta_json") else None
    error = doc.get("error") if doc["status"] != "completed" else None
    return {
        "job_id": doc["job_id"],
        "user_id": doc["user_id"],
        "target": doc.get("target", "rest"),
        "method": doc["method"],
        "state": doc["status"],
        "result": result,
        "error": error,
        "from_cache": bool(doc.get("from_cache", False)),
        "attempts": int(doc.get("attempts", 0)),
        "timestamp": datetime.now(UTC).isoformat(),
        "trace_id": doc.get("trace_id", ""),
        "meta": meta,
    }


class WebhookSender:
    """Delivers the webhook of one finished job."""

    def __init__(
        self,
        store: JobStore,
        vault: Vault,
        redis: Redis,
        max_attempts: int,
        timeout_s: float,
        *,
        lease_s: float,
        base_delay_s: float = 1.0,
        guard: urlguard.UrlGuard | None = None,
    ) -> None:
        self.guard = guard or urlguard.UrlGuard()
        self._store = store
        self._redis = redis
        self._lease_ms = max(1, int(lease_s * 1000))
        self._vault = vault
        self._max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._base = base_delay_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP client."""
        # No DNS cache and a pinned resolver: every attempt connects to the addresses it just checked.
        connector = aiohttp.TCPConnector(resolver=urlguard.PinnedResolver(self.guard), use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": "FlickrHub-Webhooks/0.1"}
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()

    async def deliver(self, job_id: str) -> str:
        """POST the job's webhook until it is accepted, refused or out of attempts; returns the outcome."""
        lease = keys.webhook_lease(job_id)
        if not await self._redis.set(lease, "1", nx=True, px=self._lease_ms):
            # Another worker is delivering it; its entry stays pending until the outcome is recorded.
            metrics.WEBHOOKS.labels(result="duplicate").inc()
            log.info("webhook already being delivered", extra={"job_id": job_id})
            return "duplicate"
        doc = await self._store.get(job_id)
        if doc is None or not doc.get("callback_url") or "callback_secret" not in doc:
            outcome = "skipped"  # none asked for, or one was delivered already (its secret is gone)
        else:
            outcome = await self._send(job_id, doc)
        # Any outcome is recorded and the secret dropped: a later entry is skipped without the lease.
        await self._redis.delete(lease)
        return outcome

    async def _send(self, job_id: str, doc: Doc) -> str:
        """The attempts of one delivery; records the outcome on the job."""
        secret = self._vault.decrypt(doc["callback_secret"], purpose=CALLBACK_PURPOSE, record_id=job_id)
        body = json.dumps(payload(doc), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            webhook.SIGNATURE_HEADER: webhook.sign(body, secret),
            "X-FlickrHub-Event": f"job.{doc['status']}",
            "X-FlickrHub-Delivery": uuid.uuid4().hex,
            "X-FlickrHub-Job-Id": job_id,
        }
        telemetry.inject_fields(headers)
        status = 0
        for attempt in range(1, self._max_attempts + 1):
            try:
                status = await self._post(doc["callback_url"], body, headers)
            except urlguard.UrlRefused as exc:
                metrics.WEBHOOKS.labels(result="refused").inc()
                await self._store.mark_webhook(job_id, "refused", attempt, 0)
                log.warning("webhook refused: %s", exc, extra={"job_id": job_id})
                return "refused"
            if 200 <= status < 300:
                metrics.WEBHOOKS.labels(result="delivered").inc()
                await self._store.mark_webhook(job_id, "delivered", attempt, status)
                return "delivered"
            if 400 <= status < 500 and status not in {408, 425, 429}:
                break  # the receiver refused it; retrying will not help
            metrics.WEBHOOKS.labels(result="retry").inc()
            if attempt < self._max_attempts:
                await asyncio.sleep(backoff.delay(attempt, self._base, 300.0))
        metrics.WEBHOOKS.labels(result="failed").inc()
        await self._store.mark_webhook(job_id, "failed", attempt, status)
        log.warning("webhook failed after %d attempts (HTTP %d)", attempt, status, extra={"job_id": job_id})
        return "failed"

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST to the URL's checked addresses; 0 when unreachable; UrlRefused when not allowed."""
        assert self._session is not None, "start() first"
        with telemetry.tracer().start_as_current_span(telemetry.SPAN_WEBHOOK):
            host, port = urlguard.split_url(url)
            try:
                addresses = await self.guard.resolve(host, port)
            except urlguard.UrlUnresolved as exc:  # DNS trouble may pass: retry like a network error
                log.info("webhook host unresolved: %s", exc)
                return 0
            pinned = urlguard.pin(host, addresses)
            try:
                async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    return resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("webhook POST failed: %s", type(exc).__name__)
                return 0
            finally:
                urlguard.unpin(pinned)
