"""Cross-scene face consistency per project, recorded when the project is finalized.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
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
