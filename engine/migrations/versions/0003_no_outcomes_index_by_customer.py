"""no index on outcomes by customer (nothing reads results by customer)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 22:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_outcomes_customer_occurred")


def downgrade() -> None:
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outcomes_customer_occurred", ["customer_id", "occurred_at"], unique=False
        )
