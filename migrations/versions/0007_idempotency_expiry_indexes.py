"""Indexes for the expiry of Idempotency-Key records: the purge finds expired keys by their
creation time (``app/stores/idempotency.py``) without scanning the tables it keeps

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Only deliveries that still hold a key: once released (or never given one) a delivery is of no
# interest to the purge, so the index stays as small as the last day's keyed triggers.
HOLDS_A_KEY = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_idempotency_record_created_at", "idempotency_record", ["created_at"])
    op.create_index(
        "ix_delivery_idempotency_created_at", "delivery", ["created_at"],
        postgresql_where=HOLDS_A_KEY, sqlite_where=HOLDS_A_KEY,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_delivery_idempotency_created_at", table_name="delivery")
    op.drop_index("ix_idempotency_record_created_at", table_name="idempotency_record")
