"""`vidpipe db upgrade`: bring the database schema to head."""

from __future__ import annotations

import argparse

from vidpipe_tasks.cli.common import settings_from


def cmd_db(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from vidpipe_tasks.db.migrate import prepare_installation

    prepare_installation(settings, migrate=True)
    print(f"database at head: {settings.database_url}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=cmd_db)
