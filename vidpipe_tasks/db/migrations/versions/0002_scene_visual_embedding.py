"""Scene visual embedding (open_clip) for visual continuity between consecutive scenes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scene_manifests") as batch:
        batch.add_column(sa.Column("visual_embedding", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("visual_embedder", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scene_manifests") as batch:
        batch.drop_column("visual_embedder")
        batch.drop_column("visual_embedding")
