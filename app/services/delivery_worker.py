"""The delivery worker (SPEC §6): takes due deliveries from the outbox and sends them, at most
``CHATBOTS_DELIVERY_CONCURRENCY`` at a time, in the API process (by default) or as
``chatbots worker``; any number of either run side by side.

It sleeps until there may be work: a trigger in this process sets ``Runtime.deliveries_due``;
on PostgreSQL a trigger in any process wakes every worker at once (``NOTIFY`` at commit, one
``LISTEN`` connection per worker); and it looks anyway every ``CHATBOTS_DELIVERY_POLL_SECONDS``
(retries coming due, other processes on SQLite, a notification lost with its connection).

Each send's outcome is written when it returns, before its slot takes another delivery. A
claim is renewed while its work lasts (a slow model or provider), so only a dead worker's
claims expire and are taken again.
It also deletes expired ``Idempotency-Key`` records every ``CHATBOTS_IDEMPOTENCY_PURGE_SECONDS``
(``app.stores.idempotency``): every deployment runs a worker, so nobody needs a cron job.
``stop()`` (SIGTERM) stops claiming, lets the sends in flight finish and record their outcome,
and gives back any claim whose send never started; ``stop_and_drain`` (the API's shutdown)
bounds that wait, then cuts the sends off and gives their claims back.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from app.channels import outbox
from app.channels.base import SendContext, Sender
from app.channels.outbox import DueDelivery
from app.channels.senders import default_senders
from app.db import driver_dsn, utcnow
from app.observability.metrics import count_delivery_attempt
from app.runtime import Runtime
from app.services.delivery import Deps, process
from app.stores.idempotency import purge_expired_keys
from app.stores.listen import Listener
from app.stores.trigger import DELIVERY_DUE_CHANNEL

log = logging.getLogger(__name__)


class DeliveryWorker:
    def __init__(self, runtime: Runtime, senders: dict[str, Sender] | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.senders = senders if senders is not None else default_senders()
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._next_purge = 0.0  # monotonic: the first pass purges

    def stop(self) -> None:
        self._stopping.set()
        self.runtime.deliveries_due.set()

    async def stop_and_drain(self, running: "asyncio.Task[None]", timeout: float) -> None:
        """Stop claiming and give the sends in flight ``timeout`` seconds to finish; then cut
        them off, which gives their claims back (``_deliver``) rather than leaving them to
        expire: another worker takes them at once."""
        self.stop()
        try:
            await asyncio.wait_for(running, timeout)
        except TimeoutError:
            log.warning("delivery worker stopped after %.0f s: unfinished sends given back", timeout)

    async def run(self) -> None:
        settings, wake = self.settings, self.runtime.deliveries_due
        async with (
            httpx.AsyncClient(follow_redirects=False) as http,
            _notifications(self.runtime, wake) as listening,
        ):
            deps = Deps(self.runtime.store, self.runtime.llm, settings,
                        SendContext(http, settings), self.senders, random.Random())  # fmt: skip
            try:
                while not self._stopping.is_set():
                    wake.clear()  # before claiming: a wake-up during the claim is not lost
                    free = settings.delivery_concurrency - len(self._in_flight)
                    if free > 0:
                        for delivery in await self._claim(free):
                            self._start(deps, delivery)
                    await self.purge_expired_keys_if_due()
                    await listening()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), settings.delivery_poll_seconds)
                if self._in_flight:
                    log.info("delivery worker stopping: %d sends to finish", len(self._in_flight))
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
            except asyncio.CancelledError:  # cut off: each send gives its claim back first
                for task in self._in_flight:
                    task.cancel()
                await asyncio.gather(*self._in_flight, return_exceptions=True)
                raise

    async def _claim(self, limit: int) -> list[DueDelivery]:
        try:
            return await outbox.claim_due_deliveries(
                self.runtime.store, now=utcnow(), limit=limit,
                lease_seconds=self.settings.delivery_lease_seconds,
            )  # fmt: skip
        except Exception as exc:  # the database is away: look again at the next poll
            log.warning("cannot claim deliveries: %s: %s", type(exc).__name__, exc)
            return []

    async def purge_expired_keys_if_due(self) -> None:
        """Delete expired Idempotency-Key records, at most once per purge interval (each pass
        of the loop asks; the first one purges)."""
        if time.monotonic() < self._next_purge:
            return
        try:
            await purge_expired_keys(self.runtime.store, utcnow(), self.settings.idempotency_key_seconds)
        except Exception as exc:  # the database is away: the next pass tries again
            log.warning("cannot purge expired idempotency keys: %s", type(exc).__name__)
            return
        self._next_purge = time.monotonic() + self.settings.idempotency_purge_seconds

    def _start(self, deps: Deps, delivery: DueDelivery) -> None:
        task = asyncio.create_task(self._deliver(deps, delivery))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self.runtime.deliveries_due.set()  # a slot is free

        task.add_done_callback(done)

    async def _deliver(self, deps: Deps, delivery: DueDelivery) -> None:
        heartbeat = asyncio.create_task(self._keep_claim(delivery))
        try:
            count_delivery_attempt(await process(deps, delivery))
        except asyncio.CancelledError:
            # Cut off (not a SIGTERM, which waits): the claim is given back rather than left to
            # expire. Had the provider already accepted the message, this is the one resend
            # the guarantee allows, as an expired lease would be.
            with contextlib.suppress(Exception):
                await asyncio.shield(outbox.release_claim(deps.store, delivery.id, utcnow()))
            raise
        except Exception:
            count_delivery_attempt("error")
            # A bug or the database gone mid-way: the claim expires after the lease and the
            # delivery is taken again (at most the one resend the README's guarantee allows).
            log.exception("delivery %s failed unexpectedly", delivery.public_id)
        finally:
            heartbeat.cancel()

    async def _keep_claim(self, delivery: DueDelivery) -> None:
        """Renew the lease every third of it while the delivery is being worked on."""
        lease = self.settings.delivery_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await outbox.extend_lease(self.runtime.store, delivery.id, utcnow(), lease)
            except Exception as exc:  # the database is away: the claim may lapse; keep trying
                log.warning("cannot renew the claim of delivery %s: %s", delivery.public_id, type(exc).__name__)


@contextlib.asynccontextmanager
async def _notifications(runtime: Runtime, wake: asyncio.Event) -> AsyncIterator[Callable[[], Awaitable[object]]]:
    """On PostgreSQL a LISTEN connection whose notifications set ``wake``; the yielded callable
    (re)opens it when it is closed (the database restarted). Elsewhere nothing to do."""
    if runtime.driver_pool is None:

        async def nothing() -> None:
            return None

        yield nothing
        return
    listener = Listener(driver_dsn(runtime.settings.database_url), DELIVERY_DUE_CHANNEL, lambda _: wake.set())
    try:
        await listener.listening()
        yield listener.listening
    finally:
        await listener.close()
