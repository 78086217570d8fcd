"""Cross-scene face consistency per project, recorded when the project is finalized.

Revision ID: 0005
Revises: 0007 (main already holds 0007_asset_binding on 0004)
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("face_consistency", sa.Float(), nullable=True))
        batch.add_column(sa.Column("face_consistency_detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("face_consistency_detail")
        batch.drop_column("face_consistency")
