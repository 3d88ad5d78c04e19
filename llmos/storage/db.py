"""The metadata database: one engine and session factory, migrated to head on open.

SQLite (the default, a file in the data dir) runs in WAL mode with `synchronous=FULL` (a
committed transaction survives power loss), foreign keys on, and every transaction opened with
`BEGIN IMMEDIATE` so the writer lock is taken up front (no lock-upgrade deadlocks) and DDL is
transactional. PostgreSQL is used by URL. Migrations run in one transaction under a lock, so two
processes starting together migrate once; a database stamped by a newer llmos is refused.
`read_only=True` opens a database for inspection (`llmos doctor`): never migrated, never written,
and no file is created next to it. A writable SQLite database keeps one idle connection open for
its lifetime, so its WAL and shared-memory index stay allocated and reads still work when the disk
is full; a transaction that cannot be written fails as `InsufficientStorage` (507).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from llmos.config import StorageConfig
from llmos.errors import LlmosError
from llmos.storage.layout import DataDir
from llmos.storage.space import disk_errors

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every llmos process.
_PG_MIGRATION_LOCK_ID = 0x11_05_70_5A


class SchemaTooNew(LlmosError):
    """The database was migrated by a newer llmos than this one."""

    status_code = 500
    code = "schema_too_new"


def database_url(config: StorageConfig) -> str:
    """The configured URL, or the SQLite file in the data dir."""
    if config.database_url:
        return config.database_url
    return f"sqlite:///{DataDir(config.data_dir).db_path}"


class Database:
    """An engine plus a session factory for one metadata database.

    `Database(url_or_config)` connects and applies migrations (unless `migrate=False` or
    `read_only=True`); `with db.session() as s:` gives a session committed on success, rolled
    back on error.
    """

    def __init__(
        self,
        url_or_config: str | StorageConfig,
        *,
        migrate: bool = True,
        busy_timeout_ms: int = 5000,
        read_only: bool = False,
    ) -> None:
        if isinstance(url_or_config, StorageConfig):
            url = database_url(url_or_config)
            busy_timeout_ms = url_or_config.busy_timeout_ms
            if not url_or_config.database_url and not read_only:
                DataDir(url_or_config.data_dir).ensure()
        else:
            url = url_or_config
        self.url = make_url(url)
        self.is_read_only = read_only
        create = _create_read_only_engine if read_only else _create_engine
        self.engine = create(url, busy_timeout_ms)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._keeper: PoolProxiedConnection | None = None
        with self._disk_errors("opening the metadata database"):
            if migrate and not read_only:
                self.migrate()
            if not read_only and self.sqlite_path is not None:
                self._keeper = self._keep_wal_open()

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql` (the dialect name)."""
        return self.engine.dialect.name

    @property
    def sqlite_path(self) -> Path | None:
        if self.backend != "sqlite" or not self.url.database or self.url.database == ":memory:":
            return None
        return Path(self.url.database)

    def _keep_wal_open(self) -> PoolProxiedConnection:
        """An idle connection held for the Database's lifetime. The last connection to close
        deletes the WAL and its -shm index, and the next one must allocate them again: on a
        full disk it cannot, so every read would fail. A connection that has read once keeps its
        shared lock, so nobody else is "last"; it holds no transaction, so checkpoints go on."""
        conn = self.engine.raw_connection()
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM sqlite_master")
        cursor.fetchall()
        cursor.close()
        return conn

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block exits normally, rolled back otherwise.
        A commit the disk cannot take raises `InsufficientStorage` (nothing of it is kept)."""
        with (
            self._disk_errors("a metadata database transaction"),
            self._sessions() as session,
            session.begin(),
        ):
            yield session

    def _disk_errors(self, operation: str) -> contextlib.AbstractContextManager[None]:
        path = self.sqlite_path
        return disk_errors(operation, path.parent if path is not None else None)

    def migrate(self) -> None:
        """Bring the schema to head; refuse a database from a newer schema."""
        script = ScriptDirectory.from_config(_alembic_config())
        head = script.get_current_head()
        with self.engine.connect() as conn, conn.begin():
            if self.backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK_ID})
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and _unknown_revision(script, current):
                raise SchemaTooNew(
                    f"the database {self.url.render_as_string(hide_password=True)} has schema "
                    f"revision {current!r}, newer than this llmos knows (head {head!r})",
                    hint="upgrade llmos, or point LLMOS_DATABASE_URL at another database",
                )
            if current != head:
                logger.info("migrating database from %s to %s", current, head)
                cfg = _alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema revision stamped in the database."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def is_known_revision(self, revision: str) -> bool:
        """True if this llmos has a migration named `revision` (False: a newer llmos wrote it)."""
        return not _unknown_revision(ScriptDirectory.from_config(_alembic_config()), revision)

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` ("ok" when sound); "ok" on other backends."""
        if self.backend != "sqlite":
            return "ok"
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def dispose(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        self.engine.dispose()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _unknown_revision(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is None
    except Exception:  # alembic raises several types for an unknown id
        return True


def _create_engine(url: str, busy_timeout_ms: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    # NullPool: a connection per session; cheap for SQLite and avoids sharing one across forks.
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control from pysqlite (which would run DDL outside transactions).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _create_read_only_engine(url: str, busy_timeout_ms: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_pre_ping=True, execution_options={"postgresql_readonly": True}
        )
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError("a read-only database needs a SQLite file")
    path = Path(parsed.database)
    # A `mode=ro` reader of a WAL database creates -wal and -shm files when they are missing and
    # leaves them behind. They exist while another process has the database open (then `mode=ro`
    # reads its committed transactions); otherwise nobody writes and `immutable=1` opens the file
    # without creating anything.
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    uri = f"file:{quote(str(path.resolve()))}?{mode}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.isolation_level = None  # transactions are begun below, as in `_create_engine`
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        return conn

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: a reader never asks for the write lock

    return engine
