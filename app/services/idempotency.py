"""``Idempotency-Key`` (SPEC §3.2): a repeated successful request of the same credential gets
the first response again without a second turn; a repeat while the first is in flight gets 409.

The key is claimed (committed) before the work starts, so a concurrent repeat on any process
sees it. A failed request releases its key, so the client may retry it. A claim whose request
never finished (its process died) is taken over once it is older than ``stale_after``. A key
first used ``key_seconds`` ago or longer has expired (``app.stores.idempotency``): it is taken
over as a new request, whatever it was used for.
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import BadRequest, Conflict
from app.models import IdempotencyRecord
from app.stores.idempotency import expiry_cutoff

MAX_KEY_LENGTH = 255


def request_fingerprint(path: str, body: Any) -> str:
    return hashlib.sha256(path.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def run_idempotent(
    db: AsyncSession,
    *,
    credential: str,
    key: str,
    fingerprint: str,
    stale_after: float,
    key_seconds: float,
    operation: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    replay = await _claim(db, credential, key, fingerprint, stale_after, key_seconds)
    if replay is not None:
        return replay
    try:
        body = await operation()
    except BaseException:
        await db.rollback()
        await db.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.credential == credential, IdempotencyRecord.key == key
            )
        )
        await db.commit()
        raise
    record = await _find(db, credential, key)
    if record is not None:
        record.response = body
    await db.commit()
    return body


async def _find(db: AsyncSession, credential: str, key: str) -> IdempotencyRecord | None:
    return await db.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.credential == credential, IdempotencyRecord.key == key
        )
    )


async def _claim(
    db: AsyncSession, credential: str, key: str, fingerprint: str, stale_after: float, key_seconds: float
) -> dict[str, Any] | None:
    """Claim the key and commit; or return the stored response; or raise 409/400."""
    existing = await _find(db, credential, key)
    if existing is None:
        try:
            async with db.begin_nested():
                db.add(IdempotencyRecord(credential=credential, key=key, request_hash=fingerprint))
            await db.commit()
            return None
        except IntegrityError:
            existing = await _find(db, credential, key)
            if existing is None:
                raise
    now = utcnow()
    if existing.created_at <= expiry_cutoff(now, key_seconds):
        await _take_over(db, existing, fingerprint, now)  # expired: a new request
        return None
    if existing.request_hash != fingerprint:
        raise BadRequest("This Idempotency-Key was already used with a different request.")
    if existing.response is not None:
        return existing.response
    if now - existing.created_at < timedelta(seconds=stale_after):
        raise Conflict()
    await _take_over(db, existing, fingerprint, now)  # the first attempt died
    return None


async def _take_over(db: AsyncSession, existing: IdempotencyRecord, fingerprint: str, now: datetime) -> None:
    """Make the record this request's claim, unless a concurrent repeat took it first (it
    changed ``created_at``): then that one is in flight, and this one is a 409."""
    R = IdempotencyRecord
    taken = await db.execute(
        update(R)
        .where(R.id == existing.id, R.created_at == existing.created_at)
        .values(request_hash=fingerprint, response=null(), created_at=now)
        .execution_options(synchronize_session=False)
    )
    await db.commit()
    if taken.rowcount != 1:
        raise Conflict()
    db.expunge(existing)  # its attributes are the old claim's: read it again when needed
