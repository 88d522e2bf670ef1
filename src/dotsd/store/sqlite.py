"""The SQLite store: one file ``dotsd.sqlite3`` in the server's state directory.

Durability. The database runs in WAL mode with ``synchronous=FULL``:

* A commit in WAL mode appends the transaction to the ``-wal`` file with write(2) before
  COMMIT returns. From then on the data is in the kernel's page cache, which outlives the
  process: a ``kill -9`` right after an acknowledgement loses nothing, even with
  ``synchronous=NORMAL``.
* NORMAL only fsyncs the WAL at checkpoints, so a power loss or kernel crash can roll back
  the last commits (the file stays consistent, but acknowledged requests would be gone).
  FULL fsyncs the WAL at every commit, so what the server acknowledged also survives power
  loss. That is the promise the server makes to a client (RFC 9132 §4.4.1: a 2.01 means the
  request is installed), so FULL it is; the cost is one fsync per write transaction.
* SQLite fsyncs the directory when it creates a new WAL file; ``open`` also fsyncs the state
  directory once so that the database file's own directory entry is on disk.

One connection per store object, used from one thread (the asyncio server calls it
directly; sqlite3 checks the thread). ``busy_timeout`` covers other processes holding the
write lock (e.g. ``dotsd`` admin commands run while the server is up); write transactions
begin with ``BEGIN IMMEDIATE`` so that they wait at the start, never fail half-way.

PostgreSQL: ``schema.py`` is written for both engines (portable types and statements, the
differences in ``schema.Dialect``). A ``PostgresStore`` would implement ``base.Store`` with
psycopg, ``schema.POSTGRESQL`` and the same ``schema.migrate``; it is not written yet.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dotsd.store import schema
from dotsd.store.base import (
    STATUS_MAX,
    STATUS_MIN,
    CuidBinding,
    JsonObject,
    MitigationRecord,
    SessionConfigRecord,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreIntegrityError,
    make_private_dir,
)

if TYPE_CHECKING:
    from dotsd.store.base import Store

log = logging.getLogger(__name__)

DB_FILENAME: Final = "dotsd.sqlite3"
DEFAULT_BUSY_TIMEOUT_MS: Final = 5000

_DIALECT: Final = schema.SQLITE


def _translate(exc: sqlite3.Error, what: str) -> StoreError:
    """A typed store error, with SQLite's message, for a failed ``what``."""
    message = f"{what}: {exc}"
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreIntegrityError(message)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in str(exc) or "malformed" in str(exc)
    ):
        return StoreCorruptError(message)
    return StoreError(message)


def _dumps(value: JsonObject, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc


def _loads(text: str, what: str) -> JsonObject:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreCorruptError(f"stored {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreCorruptError(f"stored {what} is not a JSON object")
    return value


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


class SqliteStore:
    """``base.Store`` on one SQLite file. Create it with ``SqliteStore.open(state_dir)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, version: int) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._version = version
        self._depth = 0  # transaction nesting: 0 = none, 1 = BEGIN, >1 = savepoints

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        check: bool = True,
    ) -> SqliteStore:
        """Open (creating if needed) ``state_dir/dotsd.sqlite3`` and migrate its schema.

        ``state_dir`` is created with mode 0700 and the database file with mode 0600: it
        holds client identities. ``check`` runs ``PRAGMA quick_check`` (linear in the size
        of the database, which is small for DOTS state). Every failure is a ``StoreError``.
        """
        state_dir = Path(state_dir)
        path = state_dir / DB_FILENAME
        try:
            if not make_private_dir(state_dir) and state_dir.stat().st_mode & 0o077:
                log.warning("state directory %s is accessible to group/others", state_dir)
            if path.exists() and not stat.S_ISREG(path.stat().st_mode):
                raise StoreError(f"{path} is not a regular file")
            # Create the file ourselves for its mode; SQLite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except NotADirectoryError as exc:
            raise StoreError(str(exc)) from None
        except OSError as exc:
            raise StoreError(f"cannot open state directory {state_dir}: {exc}") from exc

        try:
            conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,  # autocommit; transactions are explicit (BEGIN ...)
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot open {path}") from exc
        try:
            version = cls._setup(conn, path, busy_timeout_ms, check)
            _fsync_dir(state_dir)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, f"cannot open {path}") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"cannot open {path}: {exc}") from exc
            raise
        return cls(conn, path, version)

    @staticmethod
    def _setup(conn: sqlite3.Connection, path: Path, busy_timeout_ms: int, check: bool) -> int:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # The first real read of the file: a file that is not SQLite fails here.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")  # fsync at every commit: see module doc
        conn.execute("PRAGMA foreign_keys = ON")  # per connection in SQLite, off by default
        if check:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if rows != ["ok"]:
                raise StoreCorruptError(f"{path} is damaged: {'; '.join(rows[:5])}")
        conn.execute(_DIALECT.begin)
        try:
            tables = {
                str(r[0])
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "schema_version" not in tables:
                raise StoreCorruptError(f"{path} is an SQLite file but not a dotsd database")
            found = schema.migrate(conn, _DIALECT, time.time())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if found != schema.SCHEMA_VERSION:
            log.info("store %s: schema migrated from %d to %d", path, found, schema.SCHEMA_VERSION)
        return schema.SCHEMA_VERSION

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def schema_version(self) -> int:
        return self._version

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError(f"store {self._path} is closed")
        return self._conn

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db().execute(_DIALECT.sql(statement), params)
        except sqlite3.Error as exc:
            raise _translate(exc, f"store {self._path}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit: everything inside is committed together, or rolled back on any
        exception. Nested uses become savepoints (an inner failure that is caught only
        undoes the inner part)."""
        depth = self._depth
        self._execute(_DIALECT.begin if depth == 0 else f"SAVEPOINT sp{depth}")
        self._depth = depth + 1
        try:
            yield
        except BaseException:
            self._depth = depth
            self._undo(depth)
            raise
        self._depth = depth
        if depth > 0:
            self._execute(f"RELEASE sp{depth}")
            return
        try:
            self._execute("COMMIT")
        except StoreError:
            self._undo(0)
            raise

    def _undo(self, depth: int) -> None:
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return  # SQLite may already have rolled back (e.g. after an I/O error)
        try:
            if depth == 0:
                conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO sp{depth}")
                conn.execute(f"RELEASE sp{depth}")
        except sqlite3.Error:
            log.exception("store %s: rollback failed", self._path)

    def close(self) -> None:
        """Close the connection (idempotent); the WAL is checkpointed by SQLite."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise _translate(exc, f"closing {self._path}") from exc

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- cuid bindings -------------------------------------------------------------------------

    def bind_cuid(self, cuid: str, identity: str, now: float | None = None) -> str | None:
        if not cuid or not identity:
            raise ValueError("cuid and identity must be non-empty")
        t = _now(now)
        # One transaction: insert-if-absent, then compare; no other writer can slip between.
        with self.transaction():
            if self._execute(schema.BIND_CUID, (cuid, identity, t, t)).rowcount == 1:
                return None
            row = self._execute(schema.SELECT_BINDING, (cuid,)).fetchone()
            if row is None:  # pragma: no cover - the conflict row cannot vanish under the lock
                raise StoreError(f"cuid {cuid!r}: binding vanished")
            if row[1] != identity:
                return str(row[1])  # RFC 9132 §4.4.1.3: cuid collision, the server decides
            self._execute(schema.TOUCH_CUID, (t, cuid, identity))
            return None

    def get_binding(self, cuid: str) -> CuidBinding | None:
        row = self._execute(schema.SELECT_BINDING, (cuid,)).fetchone()
        return None if row is None else self._binding(row)

    def bindings(self) -> list[CuidBinding]:
        return [self._binding(row) for row in self._execute(schema.ALL_BINDINGS).fetchall()]

    @staticmethod
    def _binding(row: Sequence[Any]) -> CuidBinding:
        return CuidBinding(
            cuid=row[0], identity=row[1], first_seen=float(row[2]), last_seen=float(row[3])
        )

    def unbind_cuid(self, cuid: str) -> bool:
        """Remove the binding and, by cascade, the cuid's mitigations and configuration."""
        with self.transaction():
            return self._execute(schema.DELETE_BINDING, (cuid,)).rowcount > 0

    # -- mitigations ---------------------------------------------------------------------------

    def put_mitigation(self, mitigation: MitigationRecord) -> None:
        """Insert or replace the mitigation (cuid, mid). The cuid must be bound."""
        m = mitigation
        params = (
            m.cuid,
            m.mid,
            m.cdid,
            _dumps(m.scope, "scope"),
            m.status,
            m.lifetime,
            m.expires_at,
            bool(m.trigger_mitigation),
            m.created,
            m.updated,
            _dumps(m.extra, "extra"),
        )
        try:
            with self.transaction():
                self._execute(schema.UPSERT_MITIGATION, params)
        except StoreIntegrityError as exc:
            raise StoreIntegrityError(f"mitigation {m.cuid}/{m.mid}: {exc}") from exc

    @staticmethod
    def _mitigation(row: Sequence[Any]) -> MitigationRecord:
        try:
            return MitigationRecord(
                cuid=row[0],
                mid=int(row[1]),
                cdid=row[2],
                scope=_loads(row[3], "scope"),
                status=int(row[4]),
                lifetime=int(row[5]),
                expires_at=None if row[6] is None else float(row[6]),
                trigger_mitigation=bool(row[7]),
                created=float(row[8]),
                updated=float(row[9]),
                extra=_loads(row[10], "extra"),
            )
        except (TypeError, ValueError) as exc:
            raise StoreCorruptError(f"stored mitigation {row[0]!r}/{row[1]!r}: {exc}") from exc

    def _mitigations(self, statement: str, params: Sequence[Any] = ()) -> list[MitigationRecord]:
        return [self._mitigation(r) for r in self._execute(statement, params).fetchall()]

    def get_mitigation(self, cuid: str, mid: int) -> MitigationRecord | None:
        row = self._execute(schema.SELECT_MITIGATION, (cuid, mid)).fetchone()
        return None if row is None else self._mitigation(row)

    def mitigations(self, cuid: str) -> list[MitigationRecord]:
        """The cuid's mitigations, by mid."""
        return self._mitigations(schema.SELECT_MITIGATIONS_BY_CUID, (cuid,))

    def all_mitigations(self) -> list[MitigationRecord]:
        return self._mitigations(schema.SELECT_ALL_MITIGATIONS)

    def active_mitigations(self, now: float) -> list[MitigationRecord]:
        """Not expired at ``now``: indefinite ones and those with ``expires_at > now``."""
        return self._mitigations(schema.SELECT_ACTIVE_MITIGATIONS, (now,))

    def expired_mitigations(self, now: float) -> list[MitigationRecord]:
        """``expires_at <= now``, soonest first; the server decides what to do with them."""
        return self._mitigations(schema.SELECT_EXPIRED_MITIGATIONS, (now,))

    def delete_mitigation(self, cuid: str, mid: int) -> bool:
        with self.transaction():
            return self._execute(schema.DELETE_MITIGATION, (cuid, mid)).rowcount > 0

    def set_mitigation_status(
        self, cuid: str, mid: int, status: int, now: float | None = None
    ) -> bool:
        """Set the status (RFC 9132 Table 9: 1..8); False if there is no such mitigation."""
        if not isinstance(status, int) or not STATUS_MIN <= status <= STATUS_MAX:
            raise ValueError(f"status must be {STATUS_MIN}..{STATUS_MAX}, not {status!r}")
        with self.transaction():
            cur = self._execute(schema.UPDATE_MITIGATION_STATUS, (status, _now(now), cuid, mid))
            return cur.rowcount > 0

    # -- session configuration -----------------------------------------------------------------

    def put_session_config(self, config: SessionConfigRecord) -> None:
        """Insert or replace the cuid's configuration. The cuid must be bound."""
        params = (config.cuid, config.sid, _dumps(config.config, "config"), config.updated)
        try:
            with self.transaction():
                self._execute(schema.UPSERT_SESSION_CONFIG, params)
        except StoreIntegrityError as exc:
            raise StoreIntegrityError(f"session configuration of {config.cuid}: {exc}") from exc

    def get_session_config(self, cuid: str) -> SessionConfigRecord | None:
        row = self._execute(schema.SELECT_SESSION_CONFIG, (cuid,)).fetchone()
        return None if row is None else self._session_config(row)

    def session_configs(self) -> list[SessionConfigRecord]:
        rows = self._execute(schema.ALL_SESSION_CONFIGS).fetchall()
        return [self._session_config(row) for row in rows]

    @staticmethod
    def _session_config(row: Sequence[Any]) -> SessionConfigRecord:
        try:
            return SessionConfigRecord(
                cuid=row[0],
                sid=int(row[1]),
                config=_loads(row[2], "session configuration"),
                updated=float(row[3]),
            )
        except (TypeError, ValueError) as exc:
            raise StoreCorruptError(f"stored session configuration of {row[0]!r}: {exc}") \
                from exc

    def delete_session_config(self, cuid: str) -> bool:
        with self.transaction():
            return self._execute(schema.DELETE_SESSION_CONFIG, (cuid,)).rowcount > 0


if TYPE_CHECKING:

    def _implements_store(store: SqliteStore) -> Store:  # mypy: SqliteStore is a Store
        return store
