"""Quality attempts (gate rounds, candidates): scene_attempts; the attempt of candidate runs and of provider jobs.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scene_attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scene_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("clip_path", sa.String(length=500), nullable=True),
        sa.Column("clip_info", sa.JSON(), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("analysis", sa.JSON(), nullable=True),
        sa.Column("identity", sa.Float(), nullable=True),
        sa.Column("adherence", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("passed_gate", sa.Boolean(), nullable=True),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("project_id", "scene_index", "attempt", name="uq_scene_attempt"),
    )
    op.create_index("ix_scene_attempts_project_id", "scene_attempts", ["project_id"])
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))
    with op.batch_alter_table("generation_jobs") as batch:
        batch.add_column(sa.Column("scene_attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.drop_constraint("uq_generation_job_attempt", type_="unique")
        batch.create_unique_constraint(
            "uq_generation_job_attempt", ["project_id", "scene_index", "scene_attempt", "attempt"]
        )


def downgrade() -> None:
    with op.batch_alter_table("generation_jobs") as batch:
        batch.drop_constraint("uq_generation_job_attempt", type_="unique")
        batch.create_unique_constraint("uq_generation_job_attempt", ["project_id", "scene_index", "attempt"])
        batch.drop_column("scene_attempt")
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("attempt")
    op.drop_table("scene_attempts")
