"""Backups of a SQLite store with SQLite's online backup API; PostgreSQL has its own tools.

``backup`` copies the live database page by page inside one read transaction: in WAL mode a
reader never blocks the service's writers, and the copy is the database as of one commit (a copy
of the file itself could catch a half-written checkpoint). The copy goes to a temporary file next
to the target, is checked with ``PRAGMA integrity_check`` and only then renamed into place, so a
crash leaves either no backup or a whole one.

``restore`` checks the backup first (integrity, and that it is a nextbest database), refuses to
overwrite a database that holds tables unless forced, and writes through the same backup API, so
the target's WAL and locks are honoured. Stop the service before restoring: its workers cache the
catalog and the statistics.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from engine.errors import Conflict, InvalidInput

POSTGRES_HELP = """\
nextbest backup/restore copy SQLite databases. For PostgreSQL use its own tools, which take a
consistent snapshot of a live database:

  backup:   pg_dump --format=custom --file=nextbest.dump "postgresql://USER@HOST:PORT/DB"
  restore:  createdb -h HOST -U USER NEWDB
            pg_restore --exit-on-error --no-owner --dbname="postgresql://USER@HOST:PORT/NEWDB" \\
                nextbest.dump

Then point NEXTBEST_DATABASE_URL at the restored database and run `nextbest verify` to check
that the statistics equal a replay of the log. For point-in-time recovery use continuous WAL
archiving (see the PostgreSQL manual, "Continuous Archiving and Point-in-Time Recovery").
"""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    bytes: int
    tables: int
    results: int
    integrity: str


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database (or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _require_sqlite(url: str) -> Path:
    path = sqlite_path(url)
    if path is None:
        raise InvalidInput(POSTGRES_HELP, field="db")
    return path


def backup(*, url: str, target: Path, force: bool = False) -> BackupReport:
    """Copy the database of ``url`` to ``target`` while the service may be running."""
    source = _require_sqlite(url)
    if not source.exists():
        raise InvalidInput(f"no database at {source}", field="db")
    if target.exists() and not force:
        raise Conflict(f"{target} exists; pass --force to overwrite it", field="path")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(partial)) as dst,
    ):
        # pages=-1: one step, one read transaction; a stepwise copy restarts whenever the
        # service writes, and could starve on a busy database.
        src.backup(dst, pages=-1)
        report = _inspect(dst, partial)
        # A backup file is read on its own: fold the WAL in so it is one self-contained file.
        dst.execute("PRAGMA journal_mode=DELETE")
    if report.integrity != "ok":
        partial.unlink(missing_ok=True)
        raise Conflict(f"the copy failed its integrity check: {report.integrity}", field="path")
    os.replace(partial, target)
    return BackupReport(target, target.stat().st_size, report.tables, report.results, "ok")


def restore(*, url: str, source: Path, force: bool = False) -> BackupReport:
    """Replace the database of ``url`` by the backup at ``source`` (refused over data unless
    ``force``); both are checked with ``PRAGMA integrity_check``."""
    target = _require_sqlite(url)
    if not source.is_file():
        raise InvalidInput(f"no backup file at {source}", field="path")
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src:
        try:
            checked = _inspect(src, source)
        except sqlite3.DatabaseError as error:
            message = f"{source} is not a readable database: {error}"
            raise InvalidInput(message, field="path") from None
        if checked.integrity != "ok":
            raise InvalidInput(
                f"{source} fails its integrity check: {checked.integrity}", field="path"
            )
        if not _is_nextbest(src):
            raise InvalidInput(f"{source} is not a nextbest database", field="path")
        if target.exists() and not force:
            with contextlib.closing(sqlite3.connect(target, timeout=30)) as existing:
                if _tables(existing):
                    raise Conflict(
                        f"{target} holds a database; pass --force to replace it", field="db"
                    )
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(target, timeout=30)) as dst:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=WAL")
            report = _inspect(dst, target)
    if report.integrity != "ok":
        raise Conflict(f"the restored database fails its integrity check: {report.integrity}")
    return report


def _tables(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return [str(r[0]) for r in rows]


def _is_nextbest(connection: sqlite3.Connection) -> bool:
    return {"alembic_version", "outcomes", "cell_stats"} <= set(_tables(connection))


def _inspect(connection: sqlite3.Connection, path: Path) -> BackupReport:
    integrity = "; ".join(str(r[0]) for r in connection.execute("PRAGMA integrity_check"))
    tables = _tables(connection)
    results = 0
    if "outcomes" in tables:
        results = int(connection.execute("SELECT count(*) FROM outcomes").fetchone()[0])
    size = path.stat().st_size if path.exists() else 0
    return BackupReport(path, size, len(tables), results, integrity)


__all__ = ["POSTGRES_HELP", "BackupReport", "backup", "restore", "sqlite_path"]
