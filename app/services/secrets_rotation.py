"""Re-encryption of every stored secret under the current key (``chatbots secrets rotate``).

What ``app.crypto`` encrypts lives in two columns: ``llm_provider.config`` (the provider's
``api_key``) and ``channel.config`` (bot tokens, auth tokens, signing secrets, widget tokens...);
``encrypt_secrets`` in ``admin_chatbots`` is their one writer. Every ``enc:`` value in them is
read with the current key or a fallback (or the pre-HKDF derivation) and written again under the
current key. Deleted rows too: a deleted channel's token must not become unreadable behind the
operator's back.

Batches of ``BATCH_SIZE`` rows by id, each in its own transaction with its rows locked (``FOR
UPDATE`` on PostgreSQL; SQLite has one writer at a time anyway), so a large table is never
locked whole and an edit made meanwhile by the service is neither lost nor overwritten.

Idempotent: a value already under the current key is left as it is, so a second run writes
nothing. A value no key opens is counted and named in the report, never overwritten; the other
values of its row are still re-encrypted.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import ENCRYPTED_PREFIX, reencrypt
from app.models import Channel, LlmProvider

# The tables whose ``config`` holds ``enc:`` values (see the module's docstring).
ENCRYPTED_TABLES = (LlmProvider.__table__, Channel.__table__)
BATCH_SIZE = 200


@dataclass
class TableCounts:
    """Per table: rows read, and encrypted values found already current, re-encrypted, unreadable."""

    rows: int = 0
    current: int = 0
    rotated: int = 0
    unreadable: int = 0


@dataclass
class UnreadableValue:
    table: str
    id: int
    field: str


@dataclass
class RotationReport:
    tables: dict[str, TableCounts] = field(default_factory=dict)
    unreadable: list[UnreadableValue] = field(default_factory=list)


async def rotate_secrets(
    session: AsyncSession, keys: Sequence[str], batch_size: int = BATCH_SIZE
) -> RotationReport:
    """Re-encrypt every stored secret under ``keys[0]``, committing batch by batch."""
    report = RotationReport()
    for table in ENCRYPTED_TABLES:
        counts = report.tables.setdefault(table.name, TableCounts())
        last_id = 0
        while True:
            rows = (
                await session.execute(
                    sa.select(table.c.id, table.c.config)
                    .where(table.c.id > last_id)
                    .order_by(table.c.id)
                    .limit(batch_size)
                    .with_for_update()
                )
            ).all()
            if not rows:
                break
            updates = []
            for row_id, config in rows:
                new_config = _reencrypt_config(table.name, row_id, config, keys, counts, report)
                if new_config is not None:
                    updates.append({"row_id": row_id, "new_config": new_config})
            if updates:
                connection = await session.connection()
                await connection.execute(
                    sa.update(table)
                    .where(table.c.id == sa.bindparam("row_id"))
                    .values(config=sa.bindparam("new_config")),
                    updates,
                )
            await session.commit()
            counts.rows += len(rows)
            last_id = rows[-1].id
    return report


def _reencrypt_config(
    table: str,
    row_id: int,
    config: Any,
    keys: Sequence[str],
    counts: TableCounts,
    report: RotationReport,
) -> dict[str, Any] | None:
    """The row's config with its values re-encrypted, or None when nothing changed."""
    if not isinstance(config, dict):
        return None
    changed = dict(config)
    for name, value in config.items():
        if not isinstance(value, str):
            continue
        try:
            rewritten = reencrypt(value, keys)
        except ValueError:
            counts.unreadable += 1
            report.unreadable.append(UnreadableValue(table, row_id, name))
            continue
        if rewritten is not None:
            counts.rotated += 1
            changed[name] = rewritten
        elif value.startswith(ENCRYPTED_PREFIX):
            counts.current += 1
    return changed if changed != config else None
