"""Expired ``Idempotency-Key`` records (SPEC §3.2), on either store.

A key answers its repeats for ``CHATBOTS_IDEMPOTENCY_KEY_SECONDS`` (24 hours by default) after
its first request; after that it is forgotten and may be used again as a new request. Expiry is
decided when a key is looked up (``app.services.idempotency``, ``app.services.trigger``), so it
holds to the second whatever the clean-up's schedule; the clean-up only reclaims the space: the
delivery worker runs :func:`purge_expired_keys` every ``CHATBOTS_IDEMPOTENCY_PURGE_SECONDS``
(every API process runs a worker by default, and so does ``chatbots worker``; several doing it
at once delete the same rows, harmlessly).

Both kinds: incoming_message's ``idempotency_record`` rows are deleted; trigger_bot's key lives
on its delivery (written in the trigger's transaction), where it is cleared, the delivery kept.
"""

from datetime import datetime, timedelta

from sqlalchemy import String, bindparam, delete, update

from app.models import Delivery, IdempotencyRecord
from app.stores.base import Executor, TurnStore

R, D = IdempotencyRecord.__table__, Delivery.__table__
_CUTOFF = bindparam("cutoff", type_=D.c.created_at.type)

DELETE_EXPIRED_RECORDS = delete(R).where(R.c.created_at <= bindparam("cutoff", type_=R.c.created_at.type))
_RELEASE = {"idempotency_credential": None, "idempotency_key": None, "request_hash": None}
RELEASE_EXPIRED_DELIVERY_KEYS = (
    update(D).where(D.c.idempotency_key.is_not(None), D.c.created_at <= _CUTOFF).values(_RELEASE)
)
RELEASE_EXPIRED_DELIVERY_KEY = (
    update(D)
    .where(
        D.c.idempotency_credential == bindparam("p_credential", type_=String),
        D.c.idempotency_key == bindparam("p_key", type_=String),
        D.c.created_at <= _CUTOFF,
    )
    .values(_RELEASE)
)


def expiry_cutoff(now: datetime, key_seconds: float) -> datetime:
    """Keys first used at or before this moment have expired."""
    return now - timedelta(seconds=key_seconds)


async def release_expired_delivery_key(db: Executor, credential: str, key: str, cutoff: datetime) -> None:
    """Free one trigger's expired key so that a new trigger may take it (in its transaction)."""
    await db.execute(RELEASE_EXPIRED_DELIVERY_KEY, {"p_credential": credential, "p_key": key, "cutoff": cutoff})


async def purge_expired_keys(store: TurnStore, now: datetime, key_seconds: float) -> None:
    params = {"cutoff": expiry_cutoff(now, key_seconds)}
    async with store.statements(transaction=True) as db:
        await db.execute(DELETE_EXPIRED_RECORDS, params)
        await db.execute(RELEASE_EXPIRED_DELIVERY_KEYS, params)
