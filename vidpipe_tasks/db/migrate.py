"""Run Alembic migrations programmatically (no alembic.ini needed at run time)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

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


def prepare_installation(settings: Settings) -> None:
    """Create the work folders and migrate the database: everything a command needs before it runs."""
    prepare_folders(settings)
    upgrade_database(settings.database_url)
