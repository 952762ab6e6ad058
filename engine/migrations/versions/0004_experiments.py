"""experiments and their allocations, held results

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 23:59:39.858241
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "experiments",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("hypothesis", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("eligibility", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("allocation", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("control", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("holdout_share", sa.Float(), nullable=False),
        sa.Column("min_share", sa.Float(), nullable=False),
        sa.Column("burn_in", sa.Integer(), nullable=False),
        sa.Column("update_minutes", sa.Float(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopping", sa.JSON(), nullable=False),
        sa.Column("guardrail", sa.JSON(), nullable=True),
        sa.Column("isolate", sa.Boolean(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("arm_status", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("conclusion", sa.JSON(), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.create_index("ix_experiments_status", ["status"], unique=False)

    op.create_table(
        "experiment_allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_key"],
            ["experiments.key"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("experiment_allocations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_experiment_allocations_experiment_key"), ["experiment_key"], unique=False
        )

    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_decisions_experiment_created", ["experiment_key", "created_at"], unique=False
        )

    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("held_for", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )


def downgrade() -> None:

    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.drop_column("held_for")

    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_experiment_created")

    with op.batch_alter_table("experiment_allocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_allocations_experiment_key"))

    op.drop_table("experiment_allocations")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_index("ix_experiments_status")

    op.drop_table("experiments")
