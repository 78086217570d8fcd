"""Run Alembic migrations programmatically (no alembic.ini needed at run time)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from vidpipe_tasks.errors import SchemaNotReady
from vidpipe_tasks.settings import Settings, prepare_folders

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at vidpipe's migrations and `database_url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url)
    return cfg


def upgrade_database(database_url: str) -> None:
    """Bring the database at `database_url` to the newest schema (idempotent)."""
    command.upgrade(alembic_config(database_url), "head")


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from vidpipe_tasks.db.session import get_engine

    with get_engine(database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def prepare_installation(settings: Settings, *, migrate: bool | None = None) -> None:
    """Create the work folders and make sure the schema is current: what a command needs before it runs.

    Args:
        settings: the installation.
        migrate: run the migrations (None: only on SQLite, the embedded default). On a shared
            PostgreSQL only `vidpipe db upgrade` (the migration job) migrates; every other process
            checks the revision, so workers scaled up together never race a schema change.

    Raises:
        SchemaNotReady: not migrating and the database is behind (or ahead of) this code.
    """
    prepare_folders(settings)
    if migrate is None:
        migrate = settings.database_url.startswith("sqlite")
    if migrate:
        upgrade_database(settings.database_url)
        return
    current, head = current_revision(settings.database_url), head_revision()
    if current != head:
        from sqlalchemy.engine import make_url

        where = make_url(settings.database_url).render_as_string(hide_password=True)
        raise SchemaNotReady(
            f"database {where} is at schema revision {current}, this code needs {head}: "
            "run `vidpipe db upgrade` (the migration job) first"
        )
