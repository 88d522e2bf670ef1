"""dotsd.store: the SQLite store of a DOTS server (records, transactions, durability)."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dotsd.store import (
    DB_FILENAME,
    INDEFINITE,
    SCHEMA_VERSION,
    CuidBinding,
    MitigationRecord,
    SessionConfigRecord,
    SqliteStore,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreIntegrityError,
    StoreVersionError,
)

CUID = "mYJo7A_vkvp-jLDFzk3FlA"  # 22 characters, like RFC 9132 Appendix B
IDENTITY = "a3" * 32  # hex SHA-256 of an SPKI
SCOPE: dict[str, Any] = {
    "target-prefix": ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
    "target-port-range": [{"lower-port": 80}, {"lower-port": 443}],
    "target-protocol": [6],
    "lifetime": 3600,
}


def mitigation(mid: int = 123, cuid: str = CUID, **changes: Any) -> MitigationRecord:
    values: dict[str, Any] = {
        "cuid": cuid,
        "mid": mid,
        "scope": SCOPE,
        "status": 1,
        "lifetime": 3600,
        "expires_at": 1_800_000_000.5,
        "created": 1_799_996_400.25,
        "updated": 1_799_996_400.25,
    }
    values.update(changes)
    return MitigationRecord(**values)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(state_dir)
    assert s.bind_cuid(CUID, IDENTITY, now=100.0) is None
    yield s
    s.close()


# -- opening, schema, durability settings ------------------------------------------------------


def test_open_creates_private_directory_and_file(state_dir: Path) -> None:
    with SqliteStore.open(state_dir) as s:
        assert s.path == state_dir / DB_FILENAME
        assert s.schema_version == SCHEMA_VERSION == 1
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / DB_FILENAME).stat().st_mode) == 0o600


def test_connection_settings(store: SqliteStore) -> None:
    conn = store._db()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_reopen_keeps_data_and_does_not_migrate_twice(state_dir: Path) -> None:
    with SqliteStore.open(state_dir) as s:
        s.bind_cuid(CUID, IDENTITY, now=1.0)
        s.put_mitigation(mitigation())
    with SqliteStore.open(state_dir) as s:
        assert s.get_mitigation(CUID, 123) == mitigation()
        rows = s._db().execute("SELECT version FROM schema_version").fetchall()
        assert rows == [(1,)]


def test_newer_schema_is_refused(state_dir: Path) -> None:
    SqliteStore.open(state_dir).close()
    with sqlite3.connect(state_dir / DB_FILENAME) as raw:
        raw.execute("INSERT INTO schema_version VALUES (2, 0)")
    raw.close()
    with pytest.raises(StoreVersionError, match="version 2 is newer"):
        SqliteStore.open(state_dir)


def test_file_that_is_not_sqlite(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / DB_FILENAME).write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(StoreCorruptError, match="not a database"):
        SqliteStore.open(state_dir)


def test_sqlite_file_of_another_application(state_dir: Path) -> None:
    state_dir.mkdir()
    with sqlite3.connect(state_dir / DB_FILENAME) as raw:
        raw.execute("CREATE TABLE mitigation (x)")
    raw.close()
    with pytest.raises(StoreCorruptError, match="not a dotsd database"):
        SqliteStore.open(state_dir)


def test_damaged_database(state_dir: Path) -> None:
    with SqliteStore.open(state_dir) as s:
        s.bind_cuid(CUID, IDENTITY)
        for mid in range(200):
            s.put_mitigation(mitigation(mid))
    path = state_dir / DB_FILENAME
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 + 8 : 3 * 4096] = b"\xff" * (2 * 4096 - 8)  # pages 2-3, past their headers
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        SqliteStore.open(state_dir)


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        SqliteStore.open(tmp_path / "f")


def test_closed_store(state_dir: Path) -> None:
    s = SqliteStore.open(state_dir)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosedError):
        s.get_mitigation(CUID, 1)
    with pytest.raises(StoreClosedError):
        s.bind_cuid(CUID, IDENTITY)


# -- cuid bindings -----------------------------------------------------------------------------


def test_bind_cuid(store: SqliteStore) -> None:
    assert store.get_binding(CUID) == CuidBinding(
        cuid=CUID, identity=IDENTITY, first_seen=100.0, last_seen=100.0
    )
    # The same client again: bound, last_seen refreshed.
    assert store.bind_cuid(CUID, IDENTITY, now=200.0) is None
    assert store.get_binding(CUID) == CuidBinding(
        cuid=CUID, identity=IDENTITY, first_seen=100.0, last_seen=200.0
    )
    # Another client with the same cuid (RFC 9132 §4.4.1.3): told who holds it, nothing changes.
    assert store.bind_cuid(CUID, "psk-identity-2", now=300.0) == IDENTITY
    assert store.get_binding(CUID) == CuidBinding(
        cuid=CUID, identity=IDENTITY, first_seen=100.0, last_seen=200.0
    )
    assert store.get_binding("unknown") is None
    with pytest.raises(ValueError):
        store.bind_cuid("", IDENTITY)
    with pytest.raises(ValueError):
        store.bind_cuid(CUID, "")


def test_bind_cuid_is_atomic_across_store_objects(store: SqliteStore) -> None:
    with SqliteStore.open(store.path.parent) as other:
        assert other.bind_cuid("shared", "client-a", now=1.0) is None
        assert store.bind_cuid("shared", "client-b", now=2.0) == "client-a"
        assert store.bind_cuid("shared", "client-a", now=3.0) is None
        assert other.get_binding("shared") == CuidBinding(
            cuid="shared", identity="client-a", first_seen=1.0, last_seen=3.0
        )


def test_unbind_cuid_removes_what_belongs_to_it(store: SqliteStore) -> None:
    store.bind_cuid("other", "id-2")
    store.put_mitigation(mitigation(1))
    store.put_mitigation(mitigation(2, cuid="other"))
    store.put_session_config(SessionConfigRecord(cuid=CUID, sid=1, config={}, updated=1.0))
    assert store.unbind_cuid(CUID)
    assert not store.unbind_cuid(CUID)
    assert store.get_binding(CUID) is None
    assert store.mitigations(CUID) == []
    assert store.get_session_config(CUID) is None
    assert [m.cuid for m in store.all_mitigations()] == ["other"]


# -- mitigations -------------------------------------------------------------------------------


def test_put_and_get_mitigation(store: SqliteStore) -> None:
    m = mitigation(
        7,
        cdid="gateway-domain",
        trigger_mitigation=False,
        status=8,
        extra={"acl-list": [{"acl-name": "a"}]},
    )
    store.put_mitigation(m)
    got = store.get_mitigation(CUID, 7)
    assert got == m
    assert got is not None and got.scope == SCOPE and got.trigger_mitigation is False
    assert store.get_mitigation(CUID, 8) is None
    assert store.get_mitigation("unknown", 7) is None


def test_indefinite_lifetime(store: SqliteStore) -> None:
    m = mitigation(1, lifetime=INDEFINITE, expires_at=None)
    store.put_mitigation(m)
    assert store.get_mitigation(CUID, 1) == m
    assert store.active_mitigations(now=math.inf) == [m]
    assert store.expired_mitigations(now=1e12) == []


def test_put_replaces_cuid_mid_is_unique(store: SqliteStore) -> None:
    store.put_mitigation(mitigation(5))
    newer = mitigation(5, status=2, lifetime=60, expires_at=2e9, updated=1_800_000_000.0)
    store.put_mitigation(newer)
    assert store.mitigations(CUID) == [newer]
    count = store._db().execute("SELECT COUNT(*) FROM mitigation").fetchone()[0]
    assert count == 1
    # The same mid under another cuid is another mitigation.
    store.bind_cuid("other", "id-2")
    store.put_mitigation(mitigation(5, cuid="other"))
    assert len(store.all_mitigations()) == 2


def test_list_by_cuid_ordered_by_mid(store: SqliteStore) -> None:
    store.bind_cuid("other", "id-2")
    for mid in (30, 10, 20):
        store.put_mitigation(mitigation(mid))
    store.put_mitigation(mitigation(15, cuid="other"))
    assert [m.mid for m in store.mitigations(CUID)] == [10, 20, 30]
    assert [m.mid for m in store.mitigations("other")] == [15]
    assert store.mitigations("nobody") == []
    assert [(m.cuid, m.mid) for m in store.all_mitigations()] == [
        (CUID, 10),
        (CUID, 20),
        (CUID, 30),
        ("other", 15),
    ]


def test_delete_mitigation(store: SqliteStore) -> None:
    store.put_mitigation(mitigation(1))
    store.put_mitigation(mitigation(2))
    assert store.delete_mitigation(CUID, 1)
    assert not store.delete_mitigation(CUID, 1)
    assert [m.mid for m in store.mitigations(CUID)] == [2]


def test_set_mitigation_status(store: SqliteStore) -> None:
    store.put_mitigation(mitigation(1))
    assert store.set_mitigation_status(CUID, 1, 5, now=1_800_000_100.0)
    got = store.get_mitigation(CUID, 1)
    assert got is not None and got.status == 5 and got.updated == 1_800_000_100.0
    assert got.created == mitigation(1).created
    assert not store.set_mitigation_status(CUID, 2, 5)
    for bad in (0, 9):
        with pytest.raises(ValueError):
            store.set_mitigation_status(CUID, 1, bad)


def test_active_and_expired(store: SqliteStore) -> None:
    a = mitigation(1, expires_at=1000.0)
    b = mitigation(2, expires_at=2000.0)
    c = mitigation(3, lifetime=INDEFINITE, expires_at=None)
    for m in (b, c, a):
        store.put_mitigation(m)
    assert store.expired_mitigations(999.9) == []
    assert store.expired_mitigations(1000.0) == [a]  # expiry instant is already expired
    assert store.expired_mitigations(5000.0) == [a, b]  # soonest first
    assert store.active_mitigations(999.9) == [a, b, c]
    assert store.active_mitigations(1000.0) == [b, c]
    assert store.active_mitigations(5000.0) == [c]


def test_mitigation_needs_a_bound_cuid(store: SqliteStore) -> None:
    with pytest.raises(StoreIntegrityError, match="nobody/1"):
        store.put_mitigation(mitigation(1, cuid="nobody"))
    assert store.all_mitigations() == []


def test_scope_must_be_json(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="not JSON"):
        store.put_mitigation(mitigation(1, scope={"x": b"bytes"}))
    with pytest.raises(ValueError, match="not JSON"):
        store.put_mitigation(mitigation(1, extra={"x": math.nan}))


@pytest.mark.parametrize(
    "changes",
    [
        {"status": 0},
        {"status": 9},
        {"mid": -1},
        {"mid": 2**32},
        {"lifetime": -2},
        {"expires_at": math.nan},
        {"created": math.inf},
        {"cuid": ""},
        {"scope": ["not", "a", "dict"]},
    ],
)
def test_mitigation_record_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mitigation(**changes)


def test_corrupt_stored_json_is_a_store_error(store: SqliteStore) -> None:
    store.put_mitigation(mitigation(1))
    store._db().execute("UPDATE mitigation SET scope = '{broken'")
    with pytest.raises(StoreCorruptError, match="scope"):
        store.get_mitigation(CUID, 1)


# -- session configuration ---------------------------------------------------------------------


def test_session_config(store: SqliteStore) -> None:
    config = {
        "mitigating-config": {"heartbeat-interval": {"current-value": 15}},
        "idle-config": {"heartbeat-interval": {"current-value": 30}},
    }
    assert store.get_session_config(CUID) is None
    first = SessionConfigRecord(cuid=CUID, sid=123, config=config, updated=10.0)
    store.put_session_config(first)
    assert store.get_session_config(CUID) == first
    second = SessionConfigRecord(cuid=CUID, sid=124, config={}, updated=20.0)
    store.put_session_config(second)  # one per cuid: replaced
    assert store.get_session_config(CUID) == second
    assert store.delete_session_config(CUID)
    assert not store.delete_session_config(CUID)
    assert store.get_session_config(CUID) is None
    with pytest.raises(StoreIntegrityError):
        store.put_session_config(SessionConfigRecord(cuid="nobody", sid=1, config={}, updated=1.0))
    with pytest.raises(ValueError):
        SessionConfigRecord(cuid=CUID, sid=2**32, config={}, updated=1.0)


# -- transactions ------------------------------------------------------------------------------


def test_transaction_commits_together(store: SqliteStore) -> None:
    with store.transaction():
        store.put_mitigation(mitigation(1))
        store.put_session_config(SessionConfigRecord(cuid=CUID, sid=1, config={}, updated=1.0))
    assert store.get_mitigation(CUID, 1) is not None
    assert store.get_session_config(CUID) is not None


def test_transaction_rolls_back_on_exception(store: SqliteStore) -> None:
    store.put_mitigation(mitigation(1))
    with pytest.raises(RuntimeError), store.transaction():
        store.put_mitigation(mitigation(2))
        store.set_mitigation_status(CUID, 1, 6)
        store.bind_cuid("new", "id-new")
        raise RuntimeError("handler failed")
    assert store.get_mitigation(CUID, 1) == mitigation(1)
    assert store.get_mitigation(CUID, 2) is None
    assert store.get_binding("new") is None
    store.put_mitigation(mitigation(3))  # the store is still usable
    assert [m.mid for m in store.mitigations(CUID)] == [1, 3]


def test_transaction_rolls_back_on_store_error(store: SqliteStore) -> None:
    with pytest.raises(StoreIntegrityError), store.transaction():
        store.put_mitigation(mitigation(1))
        store.put_mitigation(mitigation(2, cuid="unbound"))
    assert store.all_mitigations() == []


def test_nested_transaction_is_a_savepoint(store: SqliteStore) -> None:
    with store.transaction():
        store.put_mitigation(mitigation(1))
        with pytest.raises(StoreIntegrityError), store.transaction():
            store.put_mitigation(mitigation(2))
            store.put_mitigation(mitigation(3, cuid="unbound"))
        store.put_mitigation(mitigation(4))
    assert [m.mid for m in store.mitigations(CUID)] == [1, 4]


def test_uncommitted_writes_are_invisible_to_another_connection(store: SqliteStore) -> None:
    with SqliteStore.open(store.path.parent, busy_timeout_ms=50) as other:
        with store.transaction():
            store.put_mitigation(mitigation(1))
            assert other.get_mitigation(CUID, 1) is None
            with pytest.raises(StoreError, match="locked"):  # one writer at a time
                other.bind_cuid("x", "y")
        assert other.get_mitigation(CUID, 1) == mitigation(1)


# -- restarts ----------------------------------------------------------------------------------


def test_everything_comes_back_after_reopen(state_dir: Path) -> None:
    expires = time.time() + 3600.123456
    config = SessionConfigRecord(cuid=CUID, sid=7, config={"idle-config": {}}, updated=5.0)
    with SqliteStore.open(state_dir) as s:
        s.bind_cuid(CUID, IDENTITY, now=1.5)
        s.put_mitigation(mitigation(1, expires_at=expires))
        s.put_mitigation(mitigation(2, lifetime=INDEFINITE, expires_at=None))
        s.put_session_config(config)
    with SqliteStore.open(state_dir) as s:
        m = s.get_mitigation(CUID, 1)
        assert m is not None and m.expires_at == expires  # exact: the same absolute instant
        assert [x.mid for x in s.active_mitigations(expires - 1)] == [1, 2]
        assert [x.mid for x in s.expired_mitigations(expires)] == [1]
        assert s.get_session_config(CUID) == config
        assert s.get_binding(CUID) == CuidBinding(
            cuid=CUID, identity=IDENTITY, first_seen=1.5, last_seen=1.5
        )


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dotsd.store import MitigationRecord, SessionConfigRecord, SqliteStore

    store = SqliteStore.open(Path(sys.argv[1]))
    store.bind_cuid("victim", "client-identity", now=1.0)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        with store.transaction():
            store.put_mitigation(MitigationRecord(
                cuid="victim", mid=n, scope={"target-prefix": [f"192.0.2.{n % 256}/32"]},
                status=1, lifetime=3600, expires_at=1_800_000_000.0 + n,
                created=float(n), updated=float(n),
            ))
            store.put_session_config(
                SessionConfigRecord(cuid="victim", sid=n, config={"n": n}, updated=float(n))
            )
        print(f"acked {n}", flush=True)
    """
)


@pytest.mark.parametrize("kill_after", [1, 25, 120])
def test_acknowledged_writes_survive_kill_9(state_dir: Path, kill_after: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        acked = 0
        while acked < kill_after:
            line = proc.stdout.readline()
            assert line.startswith("acked "), (line, proc.stderr and proc.stderr.read())
            acked = int(line.split()[1])
        time.sleep(random.uniform(0, 0.005))  # land somewhere inside a later transaction
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        # Acknowledgements printed before the kill are still in the pipe.
        for line in proc.stdout.read().splitlines():
            if line.startswith("acked ") and line.split()[1].isdigit():
                acked = int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()

    with SqliteStore.open(state_dir) as s:  # quick_check passes: the file is consistent
        mids = [m.mid for m in s.mitigations("victim")]
        # Every acknowledged write is there; at most one more (committed, not yet printed).
        assert mids[:acked] == list(range(1, acked + 1))
        assert len(mids) in (acked, acked + 1)
        last = s.get_mitigation("victim", acked)
        assert last is not None and last.expires_at == 1_800_000_000.0 + acked
        config = s.get_session_config("victim")
        assert config is not None and config.sid == len(mids)  # same transaction as the last


def test_all_bindings_and_session_configs_are_listed(tmp_path: Path) -> None:
    """The server keeps every binding and stored configuration in memory from the start."""
    with SqliteStore.open(tmp_path) as store:
        assert store.bindings() == [] and store.session_configs() == []
        store.bind_cuid("c1", "id1", 10.0)
        store.bind_cuid("c2", "id2", 11.0)
        store.put_session_config(SessionConfigRecord(cuid="c1", sid=3, config={"a": 1},
                                                     updated=12.0))
        assert {(b.cuid, b.identity) for b in store.bindings()} == {("c1", "id1"),
                                                                    ("c2", "id2")}
        assert [(c.cuid, c.sid, c.config) for c in store.session_configs()] == [
            ("c1", 3, {"a": 1})]
