"""One SQLAlchemy engine on SQLite (WAL) or PostgreSQL, its sessions, and the migrations that
bring its schema up to date. Every store (jobs, keys, usage, workers) is built over one."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 7274001
_SQLITE_POOL = 40


def _engine(url: str, connect_timeout_s: float) -> Engine:
    if url.startswith("sqlite"):
        # A pool as large as the request thread pool (anyio's 40): a smaller one opens and closes
        # a connection (and runs the pragmas) for every request beyond it under load.
        in_memory = make_url(url).database in (None, "", ":memory:")  # one connection per thread
        pool = {} if in_memory else {"pool_size": _SQLITE_POOL, "max_overflow": _SQLITE_POOL}
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **pool
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers (the API) work while a writer (a worker) commits.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pre-ping: connections pooled before a database restart are replaced, not handed out dead.
    # The timeouts bound how long a request waits for an unreachable server or a full pool.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=connect_timeout_s,
        connect_args={"connect_timeout": max(1, round(connect_timeout_s))},
    )


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, connect_timeout_s: float = 5.0) -> Database:
        return cls(_engine(url, connect_timeout_s))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def migrate(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start."""
        with self._migration_lock(), self.engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.dialect == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(text(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})"))
                try:
                    yield
                finally:
                    connection.execute(text(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})"))
                    connection.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class FastQuery:
    """A SELECT compiled once for the engine's dialect and run on a pooled DBAPI connection,
    its values decoded by the columns' own result processors. For the hottest read (a job's
    status, polled many times a second): SQLAlchemy's per-execution bookkeeping (execution
    context, result object, row proxies) costs more there than the query itself."""

    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        for bind in compiled.binds.values():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"parameter {bind.key!r} needs conversion: use a session")
        self._engine = engine
        self._compiled = compiled
        self._sql = str(compiled)
        self._columns = list(statement.selected_columns)
        self._names = [column.name for column in self._columns]
        self._decoders: list[Any] | None = None  # from the first result's column types

    def _decoders_for(self, description: Any) -> list[Any]:
        """The columns' result processors for the driver's column type codes (PostgreSQL's
        numeric decoding depends on them), made once: the same SQL has the same types."""
        dialect = self._engine.dialect
        return [
            column.type.dialect_impl(dialect).result_processor(dialect, described[1])
            for column, described in zip(self._columns, description, strict=True)
        ]

    def _wrapped(self, error: Exception, lost: bool) -> StatementError:
        """The driver's error as SQLAlchemy's own execution raises it (OperationalError when the
        server is away: the API's 503, the workers' retry), as raw DBAPI calls do not."""
        dialect = self._engine.dialect
        return DBAPIError.instance(
            self._sql, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=lost, dialect=dialect,
        )  # fmt: skip

    def first(self, **params: Any) -> dict[str, Any] | None:
        """The first row as {column: value}, or None."""
        values = self._compiled.construct_params(params)
        positions = self._compiled.positiontup
        arguments: Any = values if positions is None else [values[name] for name in positions]
        dialect = self._engine.dialect
        try:
            connection = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # the server is away: no connection at all
            raise self._wrapped(exc, dialect.is_disconnect(exc, None, None)) from exc
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, arguments)
                row = cursor.fetchone()
                if self._decoders is None:
                    self._decoders = self._decoders_for(cursor.description)
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            # A connection the server dropped leaves the pool instead of failing the next read.
            lost = dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if lost:
                connection.invalidate(exc)
            raise self._wrapped(exc, lost) from exc
        finally:
            connection.close()  # back to the pool, which rolls back what is open
        if row is None:
            return None
        return {
            name: value if decode is None else decode(value)
            for name, decode, value in zip(self._names, self._decoders, row, strict=True)
        }
