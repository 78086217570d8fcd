"""Binding of extracted assets to characters, bindings per scene commit, and rejected faces.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("binding", sa.JSON(), nullable=True))
    with op.batch_alter_table("scene_manifests") as batch:
        batch.add_column(sa.Column("bindings", sa.JSON(), nullable=True))
    op.create_table(
        "rejected_faces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("manifest_id", sa.Integer(), sa.ForeignKey("manifests.id", ondelete="CASCADE"), nullable=False),
        sa.Column("face_engine", sa.String(length=50), nullable=False),
        sa.Column("embedding", sa.JSON(), nullable=False),
        sa.Column("asset_tag", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rejected_faces_manifest_id", "rejected_faces", ["manifest_id"])


def downgrade() -> None:
    op.drop_table("rejected_faces")
    with op.batch_alter_table("scene_manifests") as batch:
        batch.drop_column("bindings")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("binding")
