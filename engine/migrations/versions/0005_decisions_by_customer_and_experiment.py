"""an index on decisions by customer and experiment (a decision reads the customer's enrolment)

Without it the enrolment lookup of every decision walked the whole experiment's decisions through
ix_decisions_experiment_created, so a decision's cost grew with the experiment's traffic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 03:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_decisions_customer_experiment",
        "decisions",
        ["customer_id", "experiment_key", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_customer_experiment", table_name="decisions")
