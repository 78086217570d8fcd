"""Durable chains: chain epoch, lease and recovery record per project; failure reason per scene; retry counts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("chain_epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("stall_suspected_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("recovery_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("scenes") as batch:
        batch.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("task_runs") as batch:
        for name in ("retries", "polls", "crashes"):
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        for name in ("crashes", "polls", "retries"):
            batch.drop_column(name)
    with op.batch_alter_table("scenes") as batch:
        batch.drop_column("failure_reason")
    with op.batch_alter_table("projects") as batch:
        for name in ("recovery_reason", "recoveries", "stall_suspected_at", "lease_until", "chain_epoch"):
            batch.drop_column(name)
