"""``fine_tuning.job.succeeded|failed|cancelled`` webhooks, as OpenAI sends them.

Two halves, so a slow or dead receiver never holds up a job:
- :func:`enqueue_settled` (scheduler tick) turns each newly terminal job into outbox rows, in
  the database, once per status;
- :class:`WebhookSender` (its own asyncio task) POSTs due rows, signed with Standard Webhooks
  headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), and retries failures
  with exponential backoff until ``webhook_max_attempts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from service.db import Database, JobRow, WebhookDeliveryRow
from service.ids import now, random_tail
from service.lifecycle import TERMINAL
from service.settings import Settings

log = logging.getLogger("openft.webhooks")


def enqueue_settled(session: Session, settings: Settings,
                    on_settled: Callable[[JobRow], None] | None = None) -> int:
    """Outbox rows for jobs whose terminal status has not been announced yet.

    ``on_settled`` sees each job as it is announced: once, by the one replica that does
    (the scheduler's job-duration metric).
    """
    jobs = session.scalars(select(JobRow).where(
        JobRow.status.in_(TERMINAL),
        (JobRow.notified_status.is_(None)) | (JobRow.notified_status != JobRow.status),
    ).with_for_update(skip_locked=True)).all()
    created = 0
    for job in jobs:
        event_id = f"evt_{random_tail(24)}"
        payload = {"id": event_id, "object": "event", "type": f"fine_tuning.job.{job.status}",
                   "created_at": now(), "data": {"id": job.id}}
        for url in settings.webhooks.get(job.organization, []):
            session.add(WebhookDeliveryRow(
                id=f"msg_{random_tail(24)}", organization=job.organization, url=url,
                payload=payload, attempts=0, next_attempt_at=time.time()))
            created += 1
        job.notified_status = job.status
        if on_settled is not None:
            on_settled(job)
    return created


class WebhookSender:
    def __init__(self, db: Database, settings: Settings,
                 client: httpx.AsyncClient | None = None):
        self.db = db
        self.settings = settings
        self.client = client or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret else None

    async def run_forever(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                await self.send_due()
            except Exception:
                log.exception("webhook pass failed")
            await asyncio.sleep(interval_s)

    async def send_due(self) -> None:
        due = await asyncio.to_thread(self._due)
        await asyncio.gather(*(self._send(d) for d in due))

    def _due(self) -> list[WebhookDeliveryRow]:
        with self.db.session() as s:
            return list(s.scalars(select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.delivered_at.is_(None),
                WebhookDeliveryRow.gave_up_at.is_(None),
                WebhookDeliveryRow.next_attempt_at <= time.time(),
            ).limit(50)))

    def headers(self, delivery_id: str, body: str) -> dict[str, str]:
        moment = datetime.now(tz=UTC)
        headers = {"content-type": "application/json", "webhook-id": delivery_id,
                   "webhook-timestamp": str(int(moment.timestamp()))}
        if self.signer:
            headers["webhook-signature"] = self.signer.sign(delivery_id, moment, body)
        return headers

    async def _send(self, delivery: WebhookDeliveryRow) -> None:
        body = json.dumps(delivery.payload, separators=(",", ":"))
        error = None
        try:
            r = await self.client.post(delivery.url, content=body,
                                       headers=self.headers(delivery.id, body))
            if not 200 <= r.status_code < 300:
                error = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}"
        await asyncio.to_thread(self._record, delivery.id, error)

    def _record(self, delivery_id: str, error: str | None) -> None:
        with self.db.session() as s:
            d = s.get(WebhookDeliveryRow, delivery_id)
            if d is None:
                return
            d.attempts += 1
            if error is None:
                d.delivered_at = now()
                return
            d.last_error = error
            if d.attempts >= self.settings.webhook_max_attempts:
                d.gave_up_at = now()
                log.warning("webhook %s to organization %s gave up after %d attempts: %s",
                            d.id, d.organization, d.attempts, error)
            else:
                d.next_attempt_at = time.time() + (
                    self.settings.webhook_retry_base_s * 2 ** (d.attempts - 1))

    async def aclose(self) -> None:
        await self.client.aclose()
