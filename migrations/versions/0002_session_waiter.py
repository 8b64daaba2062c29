"""session_waiter: tickets of turns waiting for a busy session (arrival order across processes)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_waiter",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["chat_session.id"],
            name=op.f("fk_session_waiter_session_id_chat_session"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_waiter")),
    )
    with op.batch_alter_table("session_waiter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_waiter_session_id"), ["session_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("session_waiter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_waiter_session_id"))
    op.drop_table("session_waiter")
