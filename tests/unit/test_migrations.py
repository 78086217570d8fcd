"""The Alembic migration creates exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vidpipe_tasks.db.models import Base
from vidpipe_tasks.db.session import get_engine


def test_migrated_database_matches_the_models(settings) -> None:
    with get_engine(settings.database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
