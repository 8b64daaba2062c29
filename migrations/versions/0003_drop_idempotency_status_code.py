"""drop idempotency_record.status_code

Only ever set to 200, next to the stored response, and never read: a replay answers 200 with
the response, and a record without a response is a request still in flight.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place on every version, so it copies the table.
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.drop_column('status_code')


def downgrade() -> None:
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status_code', sa.Integer(), nullable=True))
    # What 0001's code wrote: 200 on every answered record, nothing on a claimed one.
    op.execute("UPDATE idempotency_record SET status_code = 200 WHERE response IS NOT NULL")
