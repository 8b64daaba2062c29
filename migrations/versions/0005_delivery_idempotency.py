"""delivery: the trigger's Idempotency-Key, stored with its delivery (one transaction)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("idempotency_credential", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_delivery_idempotency",
        "delivery",
        ["idempotency_credential", "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_delivery_idempotency", table_name="delivery")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
        batch.drop_column("idempotency_credential")
