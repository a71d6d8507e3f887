"""The PostgreSQL store: the same contract as the JSON files, for several app servers on one database.

How a write works (one writer at a time across every app server):

1. a group commit of this process opens one transaction and locks the one row of ``library_seq``
   (``SELECT ... FOR UPDATE``): every other writer of every server waits there, so the order of
   ``seq`` is the order of commits (a seq taken by one transaction can never be committed after a
   later one);
2. under that lock it catches up with what other servers committed (the ``library_changes`` rows
   after its last seq) and runs the updaters on that fresh state, so a check (the loan limit, one
   borrower per book, If-Match, the login lockout) sees the latest committed state;
3. it writes the changed records (``library_records``, JSONB by collection and id), one row of
   ``library_changes`` per change with its seq and public event, the new ``library_seq``, sends a
   ``NOTIFY`` and commits (synchronous commit: the WAL is flushed before the answer).

Readers keep an in-memory :class:`Snapshot` like the JSON store, so every index built on it above
the store works unchanged: each :meth:`PgStore.snapshot` asks for the changes after the seq it holds
(one query, empty when nothing changed) and applies them. A listening connection wakes this process
when another one commits (``LISTEN library_changes``) so its snapshot is caught up before a request
asks; a missed notification loses nothing, since the changes are always read from the database.

Files (covers, documents and the signing key) live in ``library_files``: a file that a process
writes into its local ``directory`` (a cache, not the source of truth) is put into the database by
the next commit of that process, before the commit that refers to it, and every other process
writes it into its own ``directory`` when it catches up past it. A file removed from a process's
``directory`` leaves a tombstone (the name, no data) at its next commit, and every other process
removes its own copy when it catches up past that.

Schema migrations are numbered SQL scripts applied at start under ``pg_advisory_lock``: several
servers starting at once apply each once, and the others wait and then go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.base import READS_SINCE, Change, Describe, GroupCommit, Pending, Record, Snapshot, Table, Txn, reads_since
from storage.errors import (
    CommitUnknownError,
    JournalTruncatedError,
    LockTimeoutError,
    StorageError,
    StoreUnavailableError,
)

log = logging.getLogger("library_api.storage")

ADVISORY_KEY = 0x6C696272  # "libr": the migration lock
CHANNEL = "library_changes"
FILE_FOLDERS = ("uploads",)
"""Folders of ``directory`` whose files are kept in the database (with the files at its top)."""

MIGRATIONS: list[str] = [
    # 1: records, the change sequence, next ids and files
    """
    CREATE TABLE library_seq (
        id int PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        floor bigint NOT NULL DEFAULT 0,
        filled boolean NOT NULL DEFAULT false,
        files bigint NOT NULL DEFAULT 0
    );
    INSERT INTO library_seq (id, seq) VALUES (1, 0);
    CREATE TABLE library_records (
        collection text NOT NULL,
        id bigint NOT NULL,
        record jsonb NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (collection, id)
    );
    CREATE TABLE library_next_ids (collection text PRIMARY KEY, next_id bigint NOT NULL);
    CREATE TABLE library_changes (
        seq bigint PRIMARY KEY,
        collection text NOT NULL,
        id bigint NOT NULL,
        record jsonb,
        event jsonb,
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX library_changes_events ON library_changes (seq) WHERE event IS NOT NULL;
    CREATE TABLE library_files (
        name text PRIMARY KEY,
        data bytea NOT NULL,
        seq bigint NOT NULL
    );
    CREATE INDEX library_files_seq ON library_files (seq);
    """,
    # 2: the commit lock and what was committed before it was granted, in one call. Each query of
    # a VOLATILE function takes a snapshot of its own, so the changes and files are read after the
    # lock is granted: they hold every commit made before ours.
    """
    CREATE FUNCTION library_lock(since bigint, files_since bigint)
    RETURNS TABLE (seq bigint, files bigint, floor bigint, change_seq bigint, collection text, id bigint,
                   record text, file_name text, file_data bytea, file_seq bigint)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        head library_seq%ROWTYPE;
    BEGIN
        SELECT * INTO head FROM library_seq s FOR UPDATE;
        RETURN QUERY SELECT head.seq, head.files, head.floor, NULL::bigint, NULL::text, NULL::bigint,
                            NULL::text, NULL::text, NULL::bytea, NULL::bigint;
        IF since < head.floor THEN
            RETURN;
        END IF;
        IF head.seq <> since THEN
            RETURN QUERY SELECT head.seq, head.files, head.floor, c.seq, c.collection, c.id, c.record::text,
                                NULL::text, NULL::bytea, NULL::bigint
                         FROM library_changes c WHERE c.seq > since ORDER BY c.seq;
        END IF;
        IF head.files <> files_since THEN
            RETURN QUERY SELECT head.seq, head.files, head.floor, NULL::bigint, NULL::text, NULL::bigint,
                                NULL::text, f.name, f.data, f.seq
                         FROM library_files f WHERE f.seq > files_since ORDER BY f.seq;
        END IF;
    END
    $$;
    """,
    # 3: a file removed stays as a tombstone (no data) with the seq of its removal, so that every
    # other server removes its own copy, and none puts it back from a copy it still has.
    """
    ALTER TABLE library_files ALTER COLUMN data DROP NOT NULL;
    """,
    # 4: the changes and files after ours are read through their seq index whatever the tables'
    # size when a session first planned library_lock. A plan is cached per session: one made while
    # library_changes was a few pages (a new database, the first minutes of a migrated one) read the
    # whole table under the commit lock for as long as the server ran, while the table grew to the
    # journal's length, so every commit of every server waited for a scan of the journal. Each
    # statement has an index to go by (none is left to a scan made dear, which would cross the JIT
    # threshold: compiling each call), and JIT is off for a function that reads a few rows.
    """
    CREATE OR REPLACE FUNCTION library_lock(since bigint, files_since bigint)
    RETURNS TABLE (seq bigint, files bigint, floor bigint, change_seq bigint, collection text, id bigint,
                   record text, file_name text, file_data bytea, file_seq bigint)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET jit = off
    AS $$
    DECLARE
        head library_seq%ROWTYPE;
    BEGIN
        SELECT * INTO head FROM library_seq s WHERE s.id = 1 FOR UPDATE;
        RETURN QUERY SELECT head.seq, head.files, head.floor, NULL::bigint, NULL::text, NULL::bigint,
                            NULL::text, NULL::text, NULL::bytea, NULL::bigint;
        IF since < head.floor THEN
            RETURN;
        END IF;
        IF head.seq <> since THEN
            RETURN QUERY SELECT head.seq, head.files, head.floor, c.seq, c.collection, c.id, c.record::text,
                                NULL::text, NULL::bytea, NULL::bigint
                         FROM library_changes c WHERE c.seq > since AND c.seq <= head.seq ORDER BY c.seq;
        END IF;
        IF head.files <> files_since THEN
            RETURN QUERY SELECT head.seq, head.files, head.floor, NULL::bigint, NULL::text, NULL::bigint,
                                NULL::text, f.name, f.data, f.seq
                         FROM library_files f WHERE f.seq > files_since AND f.seq <= head.files ORDER BY f.seq;
        END IF;
    END
    $$;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(url: str, timeout: float = 60.0) -> int:
    """Bring the database at ``url`` to :data:`SCHEMA_VERSION` under an advisory lock (servers
    starting at once wait for the one migrating). Returns the version.

    :raises StoreUnavailableError: when the database is newer than this code.
    """
    with psycopg.connect(url, autocommit=True, connect_timeout=int(timeout)) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS library_schema (version int NOT NULL)")
            row = conn.execute("SELECT version FROM library_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO library_schema VALUES (0)")
                version = 0
            else:
                version = row[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"The database is at schema version {version}, newer than this server's {SCHEMA_VERSION}: "
                    "upgrade the server"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                log.warning("database: applying schema migration %d", number)
                with conn.transaction():
                    conn.execute(MIGRATIONS[number - 1])
                    conn.execute("UPDATE library_schema SET version = %s", (number,))
            return SCHEMA_VERSION
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))


# The hot statements (a freshness check, the commit lock, a commit's writes) go straight through
# libpq (``PGconn.exec_*``: one call, the GIL released while it waits) rather than psycopg's cursors
# and pipelines: with a group commit per server and every server taking in every commit, psycopg's
# own work per statement (a cursor, its adapters, the pipeline's generators and their waits) was
# three quarters of the Python time a commit took, and was spent holding the commit lock.

# The head and the changes after ours in one statement (so in one snapshot of the database: every
# change up to the head's seq is in the answer) and one round trip; one row when nothing changed.
_CHECK = b"library_check"
_CHECK_SQL = (
    b"SELECT s.seq, s.files, s.floor, c.seq, c.collection, c.id, c.record::text FROM library_seq s "
    b"LEFT JOIN library_changes c ON c.seq > $1::bigint AND c.seq <= s.seq AND s.floor <= $1::bigint "
    b"WHERE s.id = 1 ORDER BY c.seq"
)
_FILES_AFTER = "SELECT name, data, seq FROM library_files WHERE seq > %s ORDER BY seq"
# The check's connection runs only these two statements, each by key or by a range of seq with an
# index for it: no plan cached for its life may scan a table that was small when it was made (see
# migration 4), and JIT never pays for a few rows.
_CHECK_SETTINGS = b"SET enable_seqscan = off; SET jit = off"
# A commit's writes in one statement (the changes, the records put and deleted, the next ids, the
# head and its notification), the changes as one JSON document: the time the commit lock is held
# does not grow with a statement per record, and each record is parsed once, by PostgreSQL.
_COMMIT = b"library_commit"
_COMMIT_SQL = b"""
WITH batch AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS t(seq bigint, collection text, id bigint, record jsonb, event jsonb)
), changed AS (
    INSERT INTO library_changes (seq, collection, id, record, event)
    SELECT seq, collection, id, record, event FROM batch
), put AS (
    INSERT INTO library_records (collection, id, record, seq)
    SELECT collection, id, record, seq FROM batch WHERE record IS NOT NULL
    ON CONFLICT (collection, id) DO UPDATE SET record = excluded.record, seq = excluded.seq
), gone AS (
    DELETE FROM library_records d USING batch b
    WHERE b.record IS NULL AND d.collection = b.collection AND d.id = b.id
), next_ids AS (
    INSERT INTO library_next_ids (collection, next_id)
    SELECT key, value::bigint FROM jsonb_each_text($2::jsonb)
    ON CONFLICT (collection) DO UPDATE SET next_id = GREATEST(library_next_ids.next_id, excluded.next_id)
), head AS (
    UPDATE library_seq SET seq = $3::bigint
)
SELECT pg_notify($4::text, $3::bigint::text)
"""
# The commit lock and what was committed before it was granted (``library_lock``), in the
# transaction it opens: one statement string, one round trip. Read committed whatever the server's
# default, so that each query of library_lock sees the latest.
_LOCK = b"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT * FROM library_lock(%d, %d)"
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""TCP settings for every connection of a server, unless its URL sets them: a database host that
stops answering (a failover, a network cut, not a closed connection) is found within about 25 s
by keepalives while an answer is awaited, or 30 s while what was sent is not acknowledged, instead
of the system's minutes; a check or a commit waiting on it (and every request behind that one)
then fails over to a fresh connection."""


def _with_keepalives(url: str) -> dict[str, Any]:
    """The keepalive settings of :data:`KEEPALIVES` that ``url`` does not set itself."""
    own = conninfo_to_dict(url)
    return {key: value for key, value in KEEPALIVES.items() if key not in own}


def _result(conn: psycopg.Connection, result: pq.abc.PGresult | None) -> pq.abc.PGresult:
    """``result`` of a statement run through ``conn.pgconn``, or its error raised as psycopg
    raises it (:class:`psycopg.OperationalError` when the connection broke)."""
    if result is not None and result.status in _OK:
        return result
    pgconn = conn.pgconn
    if result is None or pgconn.status == pq.ConnStatus.BAD:
        message = (result.error_message if result is not None else pgconn.error_message) or b"connection lost"
        raise psycopg.OperationalError(message.decode("utf-8", "replace").strip())
    raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _values(result: pq.abc.PGresult) -> list[list[bytes | None]]:
    """Every row of ``result`` (text format), each value as bytes or None."""
    width = result.nfields
    return [[result.get_value(row, col) for col in range(width)] for row in range(result.ntuples)]


def _pipelined(conn: psycopg.Connection, sends: list[Callable[[pq.abc.PGconn], None]]) -> None:
    """Send the statements of ``sends`` one after another without waiting for their answers (libpq's
    pipeline mode), then read every answer, waiting for them with the GIL released: the database
    runs them back to back, as one round trip. Raises the first statement's error as
    :func:`_result` does (:class:`psycopg.OperationalError` when the connection broke)."""
    pgconn = conn.pgconn
    poller = select.poll()  # not select(): a busy process has sockets numbered past 1024
    poller.register(pgconn.socket, select.POLLIN)

    def next_result() -> pq.abc.PGresult | None:
        while pgconn.is_busy():
            poller.poll()
            pgconn.consume_input()
        return pgconn.get_result()

    failed: pq.abc.PGresult | None = None
    pgconn.enter_pipeline_mode()
    try:
        for send in sends:
            send(pgconn)
        pgconn.pipeline_sync()
        if pgconn.flush():  # what did not fit in the socket's buffer (answers read meanwhile)
            poller.modify(pgconn.socket, select.POLLIN | select.POLLOUT)
            while pgconn.flush():
                if any(events & select.POLLIN for _, events in poller.poll()):
                    pgconn.consume_input()
            poller.modify(pgconn.socket, select.POLLIN)
        for _ in sends:  # each statement's results, then a None
            while (result := next_result()) is not None:
                if failed is None and result.status not in _OK and result.status != pq.ExecStatus.PIPELINE_ABORTED:
                    failed = result
        sync = next_result()
        if sync is None or sync.status != pq.ExecStatus.PIPELINE_SYNC:
            _result(conn, failed or sync)
    except psycopg.OperationalError as exc:
        if pgconn.status != pq.ConnStatus.BAD:
            raise
        # The database's own words (a terminated backend says why), else libpq's, not psycopg's
        # account of the pipeline's state.
        said = failed.error_message if failed is not None else pgconn.error_message
        raise psycopg.OperationalError(said.decode("utf-8", "replace").strip() or str(exc)) from exc
    finally:
        if pgconn.status == pq.ConnStatus.OK:
            with suppress(psycopg.Error):
                pgconn.exit_pipeline_mode()
    if failed is not None:
        _result(conn, failed)


def _changes(answer: list[list[bytes | None]]) -> list[tuple[int, str, int, bytes | None]]:
    """The changes of a check's or the lock's answer (columns 3-6: seq, collection, id, record)."""
    return [(int(r[3]), r[4].decode(), int(r[5]), r[6]) for r in answer if r[3] is not None]  # type: ignore[arg-type,union-attr]


def _bytea(value: bytes | None) -> bytes | None:
    """A bytea in text format (``\\x`` and hex digits)."""
    return None if value is None else bytes.fromhex(value[2:].decode())


FOLLOW_DELAY = 0.01
"""Seconds the listening thread waits after a notification before it asks the database for the
commit: a server under load takes the commit in meanwhile with the check of a request (which it
makes anyway), and the thread then has nothing to ask; an idle one shows it on its live feed that
much later."""

RACY_NS = 2_000_000_000
"""A folder whose time was less than this (ns) older than the moment it was looked at is read again
at the next commit: a file written in the same tick of the file system's clock as that look leaves
the folder's time as it was."""

FoundFiles = tuple[list[tuple[str, Path, tuple[int, int]]], list[str], tuple[int, tuple[int, ...]]]
"""What :meth:`PgStore._files_to_push` found: the files changed (name, path, size and mtime), the
names removed, and when the folders' times were taken, with those times (before they were read)."""


class PgStore(GroupCommit):
    """The collections of one PostgreSQL database.

    :param url: a libpq connection string (``postgresql://user:pass@host/db``).
    :param collections: the names of the collections.
    :param directory: this process's local folder for the files (uploads, the signing key): a cache
        of ``library_files``, filled from the database.
    :param describe: turns a transaction's changes into public events (see :data:`Describe`).
    :param initial: called with a :class:`Txn` once, when the database is new, to fill it.
    :param lock_timeout: seconds a write waits for the commit lock before :class:`LockTimeoutError`.
    :param journal_keep: how many changes ``library_changes`` keeps (at least).
    :param pool_size: the most connections this process opens.
    """

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        collections: Sequence[str],
        *,
        directory: Path | str | None = None,
        describe: Describe | None = None,
        initial: Callable[[Txn], Any] | None = None,
        lock_timeout: float = 10.0,
        journal_keep: int = 10_000,
        pool_size: int = 8,
        **_ignored: Any,
    ) -> None:
        self.url = url
        self.collections = tuple(collections)
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="library-files-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._describe = describe
        self._lock_timeout = lock_timeout
        self._journal_keep = max(1, journal_keep)
        self._pool_size = max(2, pool_size)
        self.failed_commits = 0
        self._closed = False
        self._problem: str | None = None
        self._init_process_state()
        try:
            self.schema_version = migrate(url, max(lock_timeout, 60.0))
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"The database cannot be reached or migrated: {_reason(exc)}") from exc
        self._snap = Snapshot(0, {name: Table(name, Snapshot(0, {}).records(name), 1, 0) for name in self.collections})
        self._files_seq = 0
        self._pushed: dict[str, tuple[int, int]] = {}
        self._removing: set[str] = set()  # removed here (remove_file), not yet tombstoned in the database
        # When the folders' times were taken at the last look that left nothing to push, and those times
        self._scanned: tuple[int, tuple[int, ...]] = (0, ())
        self._reset_memory(0)
        self._load()
        if initial is not None:
            self._fill(initial)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (store := ref()) is not None and store._init_process_state())

    def _init_process_state(self) -> None:
        """Locks, pool and threads of this process (a forked child takes fresh ones)."""
        self._start_queue()
        # The connection whose transaction holds the commit lock for exclusive(), if a block runs:
        # only the thread in that block (which holds the commit mutex) commits through it.
        self._held: psycopg.Connection | None = None
        # Why that block no longer holds the lock (taking it again after a commit failed), if so.
        self._held_lost: BaseException | None = None
        self._state = threading.RLock()
        # One freshness check at a time: a reader that arrives while one is on its way waits for the
        # next, which answers every reader that waited (under load, one query for many requests).
        self._check_mutex = threading.Lock()
        self._checked_at = float("-inf")  # when the last check that ended was sent (monotonic)
        self._pool: ConnectionPool | None = None
        self._pool_pid = os.getpid()
        # The connections of the hot paths, each used by one thread at a time: the freshness check
        # (under the check mutex) and the commits (under the commit mutex).
        self._check_conn: psycopg.Connection | None = None
        self._commit_conn: psycopg.Connection | None = None
        self._worker: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None or self._pool_pid != os.getpid():
            with self._state:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ConnectionPool(
                        self.url,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=self._lock_timeout,
                        open=True,
                        name="library",
                        # Reads are single statements (one round trip each); writes open their
                        # transaction themselves, with BEGIN in the string of their first statement.
                        kwargs={"autocommit": True, **_with_keepalives(self.url)},
                        configure=self._configure,
                    )
                    self._pool_pid = os.getpid()
        return self._pool

    def _configure(self, conn: psycopg.Connection) -> None:
        """A new pooled connection: how long any statement waits for a lock (the commit lock above
        all), set once here rather than in every transaction, and the hot statements prepared."""
        # psycopg's own prepared statements are off: its rollback() deallocates every prepared
        # statement of the connection (ours too) once it has prepared one of its own. Results are
        # read as UTF-8 text with bytea in hex, whatever the database's or role's defaults.
        conn.prepare_threshold = None
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self._lock_timeout * 1000)}ms",))
        conn.execute("SET client_encoding = 'UTF8'")
        conn.execute("SET bytea_output = 'hex'")
        for name, text in ((_CHECK, _CHECK_SQL), (_COMMIT, _COMMIT_SQL)):
            _result(conn, conn.pgconn.prepare(name, text))

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise LockTimeoutError(f"No database connection was free for {self._lock_timeout:g} s") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"The database cannot be reached: {_reason(exc)}") from exc

    @contextmanager
    def _conn_for(
        self, first: Callable[[psycopg.Connection], None], own: str, settings: bytes = b""
    ) -> Iterator[psycopg.Connection]:
        """This process's own connection for one kind of work done one at a time (``own``: the
        attribute holding it; the caller holds that work's mutex), once ``first`` (the lock, or a
        check: nothing written yet) ran on it. The hot paths skip the pool: taking a connection
        from it and giving it back cost more than the statements they run. ``settings`` (SQL) runs
        once on each new connection, after :meth:`_configure`.

        A connection that the database cut since its last use (a restart, a failover, an idle
        timeout) shows in ``first``: it is dropped and ``first`` runs once more on a fresh
        connection, so a restarted database costs no refused write or stale read.

        :raises StoreUnavailableError: when the database cannot be reached.
        """
        for attempt in (0, 1):
            conn = getattr(self, own)
            try:
                if conn is None or conn.closed:
                    conn = None  # a connection that cannot be made is not tried twice
                    conn = psycopg.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=max(1, int(self._lock_timeout)),
                        **_with_keepalives(self.url),
                    )
                    setattr(self, own, conn)  # closed below if it cannot even be configured
                    self._configure(conn)
                    if settings:
                        _result(conn, conn.pgconn.exec_(settings))
                try:
                    first(conn)
                except BaseException:  # never leave the commit lock held by a connection kept for later
                    if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                        conn.close()
                    raise
            except psycopg.Error as exc:  # the connection is dropped, whatever its state
                if conn is not None:
                    with suppress(psycopg.Error):
                        conn.close()
                # A statement the database canceled (statement_timeout, pg_cancel_backend) on a
                # connection that works is not retried on a new one: it would be canceled again.
                if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, psycopg.errors.QueryCanceled):
                    raise
                if attempt == 0 and conn is not None:
                    continue
                raise StoreUnavailableError(f"The database cannot be reached: {_reason(exc)}") from exc
            try:
                yield conn
            finally:  # what the block left open (a failed commit) ends here, not in the next use
                if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.rollback()
                    if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                        conn.close()
            return

    # -- reading ---------------------------------------------------------------------------------

    def _reset_memory(self, floor: int) -> None:
        self._changes_floor = floor
        self._change_seqs: list[int] = []
        self._change_list: list[Change] = []

    def _load(self) -> None:
        """Read every record (at start, or when this process fell behind the changes kept)."""
        with self._conn() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            seq, files_seq = conn.execute("SELECT seq, files FROM library_seq").fetchone()
            items: dict[str, list[tuple[int, Record]]] = {name: [] for name in self.collections}
            last: dict[str, int] = {name: 0 for name in self.collections}
            cur = conn.cursor(name="library_load")
            cur.itersize = 20_000
            cur.execute("SELECT collection, id, record::text, seq FROM library_records")
            for collection, rid, record, rseq in cur:
                if collection in items:
                    items[collection].append((rid, orjson.loads(record)))
                    last[collection] = max(last[collection], rseq)
            cur.close()
            next_ids = dict(conn.execute("SELECT collection, next_id FROM library_next_ids").fetchall())
            files = conn.execute("SELECT name, data, seq FROM library_files").fetchall()
            conn.rollback()
        tables = {}
        for name in self.collections:
            base = Table(name, Snapshot(0, {}).records(name), 1, 0)
            table = base.with_changes(items[name], last[name], next_ids.get(name, 1))
            tables[name] = table
        with self._state:
            if seq < self._snap.seq:  # a commit of this process went past it while it was read
                return
            self._snap = Snapshot(seq, tables)
            self._reset_memory(seq)
            self._write_files([f for f in files if f[2] > self._files_seq or self._files_seq == 0])
            self._files_seq = max(self._files_seq, files_seq)

    def _fill(self, initial: Callable[[Txn], Any]) -> None:
        """Run ``initial`` once in the database's life (the first server to start does)."""

        def fill(txn: Txn) -> None:
            initial(txn)

        with self._commit_mutex, self._conn() as conn:
            conn.execute("BEGIN")
            row = conn.execute("SELECT filled FROM library_seq FOR UPDATE").fetchone()
            if row[0]:
                conn.rollback()
                return
            self._catch_up_in(conn)
            base = Txn(self._snap)
            initial(base)
            self._commit_in(conn, base, extra="UPDATE library_seq SET filled = true")

    def snapshot(self) -> Snapshot:
        """See :meth:`Store.snapshot`: one query (the head and any changes after ours), unless a
        check sent after the moment asked about (:data:`READS_SINCE`, or now) has already ended."""
        asked = READS_SINCE.get()
        if asked is None:
            asked = time.monotonic()
        if self._checked_at >= asked:
            return self._snap
        with self._check_mutex:
            if self._checked_at < asked:
                self._check()
        return self._snap

    def held(self) -> Snapshot:
        """See :meth:`Store.held`: no query (the listening thread takes other servers' commits in
        within milliseconds of their notification)."""
        return self._snap

    def _check(self) -> None:
        """Ask the database for what changed since this process's snapshot. Check mutex held. A
        check that fails counts too: readers keep the last good state, and the problem is noted."""
        sent = time.monotonic()
        try:
            with self._conn_for(self._catch_up_in, "_check_conn", _CHECK_SETTINGS):
                pass
        except (StorageError, psycopg.Error) as exc:
            self._note_problem(exc)
        self._checked(sent)

    def _checked(self, sent: float) -> None:
        """A check (or the lock of a commit) sent at ``sent`` has brought the snapshot up to date."""
        if sent > self._checked_at:
            self._checked_at = sent

    @property
    def seq(self) -> int:
        return self.snapshot().seq

    def _catch_up_in(self, conn: psycopg.Connection) -> None:
        """Apply what was committed after this process's snapshot (in ``conn``'s transaction): one
        query when nothing changed."""
        with self._state:
            since = self._snap.seq
            files_since = self._files_seq
        answer = _values(_result(conn, conn.pgconn.exec_prepared(_CHECK, [b"%d" % since])))
        seq, files_seq, floor = (int(v) for v in answer[0][:3])  # type: ignore[arg-type]
        if seq == since and files_seq == files_since:
            self._problem = None
            return
        if since < floor:
            self._fell_behind(since, floor)
            return
        rows = _changes(answer)
        # After the changes: a file is committed with (or before) the first change naming it, so
        # every file a change read above names is in this answer.
        files = conn.execute(_FILES_AFTER, (files_since,)).fetchall() if files_seq != files_since else []
        self._take_in(rows, files, files_seq)

    def _lock_and_catch_up(self, conn: psycopg.Connection) -> None:
        """Take the commit lock (the one row of library_seq) in ``conn``'s transaction and apply
        what was committed after this process's snapshot, in one round trip and one call
        (``library_lock``): the lock, then the changes and files after ours, read once the lock is
        held (so nothing can be committed between them and our commit)."""
        with self._state:
            since = self._snap.seq
            files_since = self._files_seq
        sent = time.monotonic()
        try:
            answer = _values(_result(conn, conn.pgconn.exec_(_LOCK % (since, files_since))))
        except psycopg.errors.LockNotAvailable as exc:
            conn.rollback()
            raise LockTimeoutError(f"The database stayed locked for more than {self._lock_timeout:g} s") from exc
        seq, files_seq, floor = (int(v) for v in answer[0][:3])  # type: ignore[arg-type]
        if since < floor:
            self._fell_behind(since, floor)
        else:
            if seq != since or files_seq != files_since:
                files = [(r[7].decode(), _bytea(r[8]), int(r[9])) for r in answer if r[7] is not None]  # type: ignore[arg-type,union-attr]
                self._take_in(_changes(answer), files, files_seq)
            self._problem = None
        self._checked(sent)

    def _fell_behind(self, since: int, floor: int) -> None:
        log.warning("this process fell behind the changes kept (%d < %d): reloading", since, floor)
        self._load()

    def _take_in(self, rows: list[Any], files: list[Any], files_seq: int) -> None:
        """Apply changes and files read from the database (``files_seq``: library_seq's files then)."""
        if files:
            files_seq = max([files_seq, *(f[2] for f in files)])
        with self._state:
            # Only files newer than what this process took in: an answer read before a tombstone
            # was committed must not write back a file another thread has since removed.
            self._write_files([f for f in files if f[2] > self._files_seq])
            self._files_seq = max(self._files_seq, files_seq)
            rows = [row for row in rows if row[0] > self._snap.seq]  # another thread may have caught up
            if rows:
                self._apply(rows)
        self._problem = None

    def _apply(self, rows: list[tuple[int, str, int, str | None]]) -> None:
        """Take in changes committed elsewhere. State mutex held."""
        old = self._snap
        changes: list[tuple[int, Change]] = []
        grouped: dict[str, list[tuple[int, Record | None]]] = {}
        current: dict[tuple[str, int], Record | None] = {}
        for seq, name, rid, text in rows:
            if name not in old.tables:
                continue
            record = None if text is None else orjson.loads(text)
            key = (name, rid)
            before = current[key] if key in current else old.tables[name].records.get(rid)
            current[key] = record
            changes.append((seq, Change(name, rid, before, record)))
            grouped.setdefault(name, []).append((rid, record))
        last = rows[-1][0]
        tables = dict(old.tables)
        for name, entries in grouped.items():
            seq = max(s for s, c in changes if c.collection == name)
            tables[name] = old.tables[name].with_changes(entries, seq)
        self._snap = Snapshot(max(old.seq, last), tables)
        self._remember_changes(changes)

    def events_since(self, since: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        raw, last = self.raw_events_since(since, limit)
        return [orjson.loads(item) for _, item in raw], last

    def raw_events_since(self, since: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        current = self.snapshot().seq
        with self._conn() as conn:
            floor = conn.execute("SELECT floor FROM library_seq").fetchone()[0]
            if since < floor or since > current:
                raise JournalTruncatedError(
                    f"The journal holds the changes after seq {floor} up to {current}, not those "
                    f"after {since}; reload the catalogue and follow on from its ETag"
                )
            rows = conn.execute(
                "SELECT seq, event::text FROM library_changes WHERE seq > %s AND seq <= %s AND event IS NOT NULL "
                "ORDER BY seq LIMIT %s",
                (since, current, limit + 1),
            ).fetchall()
        chosen = [
            (seq, b'{"seq":%d,' % seq + text[1:].encode() if text != "{}" else b'{"seq":%d}' % seq)
            for seq, text in rows[:limit]
        ]
        last = chosen[-1][0] if len(rows) > limit else current
        return chosen, last

    # -- files -----------------------------------------------------------------------------------

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        """The files of ``directory`` kept in the database, by their name there."""
        for entry in os.scandir(self.directory):
            if entry.is_file() and not entry.name.startswith("."):
                yield entry.name, Path(entry.path)
        for folder in FILE_FOLDERS:
            with suppress(FileNotFoundError):
                for entry in os.scandir(self.directory / folder):
                    if entry.is_file() and not entry.name.startswith("."):
                        yield f"{folder}/{entry.name}", Path(entry.path)

    def _write_files(self, files: list[tuple[str, bytes | None, int]]) -> None:
        """Write files read from the database into ``directory``, and remove those removed there
        (their tombstones: no data). State mutex held."""
        for name, data, _seq in files:
            path = self.directory / name
            if path.parent != self.directory and path.parent.name not in FILE_FOLDERS:
                continue
            if data is None:
                path.unlink(missing_ok=True)
                self._pushed.pop(name, None)
                continue
            content = bytes(data)
            with suppress(OSError):  # already here (a sibling worker wrote it): left as it is
                st = path.stat()
                if st.st_size == len(content) and path.read_bytes() == content:
                    self._pushed[name] = (st.st_size, st.st_mtime_ns)
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(content)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            st = path.stat()
            self._pushed[name] = (st.st_size, st.st_mtime_ns)

    def _folder_stamps(self) -> tuple[int, ...]:
        """The modification times of the folders whose files are kept in the database: a file
        written (ours are renamed into place), renamed or removed there changes its folder's."""
        stamps = []
        for folder in (self.directory, *(self.directory / name for name in FILE_FOLDERS)):
            try:
                stamps.append(os.stat(folder).st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return tuple(stamps)

    def _files_to_push(self) -> FoundFiles:
        """The files this process wrote (with their size and mtime) since they were last put into the
        database, and those it removed (:meth:`remove_file`). Looked for before the commit lock is
        taken: a request writes its file before it asks for the commit that names it.

        The folders are only read when one of them changed since the last look, or changed so
        recently that a change in the same tick of the file system's clock could hide behind the
        same time (as git treats "racy" files): a commit costs the change, not every cover kept."""
        taken = time.time_ns()
        stamps = self._folder_stamps()
        # Unchanged since a look at a moment when they were already older than a tick of the file
        # system's clock: any change since would have given a folder a newer time.
        looked, times = self._scanned
        with self._state:
            removed = sorted(self._removing)
        if stamps == times and all(stamp < looked - RACY_NS for stamp in stamps):
            return [], removed, (taken, stamps)
        changed = []
        with self._state:  # a catch-up writing another server's files records them when done
            for name, path in self._local_files():
                if name.rsplit("/", 1)[-1].startswith(".") or name.endswith((".tmp", ".lock")):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if self._pushed.get(name) != (st.st_size, st.st_mtime_ns):
                    changed.append((name, path, (st.st_size, st.st_mtime_ns)))
        # The times were taken before the folders were read (what changed while they were is
        # looked for again); they are kept once everything found is in the database.
        return changed, removed, (taken, stamps)

    def _push_files(self, conn: psycopg.Connection, found: FoundFiles | None = None) -> Callable[[], None]:
        """Put the files found by :meth:`_files_to_push` into the database, in the commit's
        transaction (so they are there before anything that names them). Commit lock held.
        Returns what to call once the transaction is committed."""
        changed, removed, stamps = found if found is not None else self._files_to_push()
        if not changed and not removed:
            self._scanned = stamps
            return lambda: None
        files_seq = conn.execute("UPDATE library_seq SET files = files + 1 RETURNING files").fetchone()[0]
        pushed = []
        for name, path, stamp in changed:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed since it was found: nothing to share
                continue
            # A tombstone of an upload is final: their names are never used twice, so one removed
            # is never put back (by a worker that still had a copy when it was removed).
            conn.execute(
                "INSERT INTO library_files (name, data, seq) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET data = excluded.data, seq = excluded.seq "
                "WHERE library_files.data IS NOT NULL OR library_files.name NOT LIKE 'uploads/%%'",
                (name, data, files_seq),
            )
            pushed.append((name, stamp))
        for name in removed:  # a tombstone: every other server removes its copy when it catches up
            conn.execute("UPDATE library_files SET data = NULL, seq = %s WHERE name = %s", (files_seq, name))

        def committed() -> None:  # only then are they in the database (a rollback pushes them again)
            with self._state:
                for name, stamp in pushed:
                    self._pushed[name] = stamp
                for name in removed:
                    self._pushed.pop(name, None)
                    self._removing.discard(name)
                self._files_seq = max(self._files_seq, files_seq)
                self._scanned = stamps

        return committed

    def share_files(self) -> None:
        """Put this process's new local files into the database now (a commit does it too)."""
        self._push_files_now()

    # -- writing ---------------------------------------------------------------------------------

    def _commit_batch(self, batch: list[Pending]) -> None:
        """See :meth:`GroupCommit._commit_batch`: one database transaction for the whole batch,
        holding the commit lock (or inside the exclusive() block that holds it)."""
        ran = False
        try:
            files = self._files_to_push()
            held = self._held
            if held is not None:
                self._still_held()
            with (
                contextlib.nullcontext(held)
                if held is not None
                else self._conn_for(self._lock_and_catch_up, "_commit_conn") as conn
            ):
                taken = len(batch)
                self._join_waiting(batch)
                if len(batch) > taken:  # a joined write's request saved its file after the first look
                    files = self._files_to_push()
                base = Txn(self._snap)
                ran = True
                self._run_updaters(base, batch)
                try:
                    self._commit_in(conn, base, files=files)
                finally:
                    if held is not None:  # the commit (or its failure) ended the lock's transaction
                        self._lock_again(conn)
        except psycopg.Error as exc:
            if ran:
                self.failed_commits += 1
            raise StoreUnavailableError(f"The database refused the change: {_reason(exc)}") from exc
        except BaseException:
            if ran:  # updaters ran (and may have changed what callers keep in step): not committed
                self.failed_commits += 1
            raise

    def _commit_in(
        self,
        conn: psycopg.Connection,
        base: Txn,
        extra: str | None = None,
        files: FoundFiles | None = None,
    ) -> None:
        """Write ``base``'s changes with their seqs and commit. The commit lock is held."""
        changes = base.changes()
        old = self._snap
        seq = old.seq
        numbered: list[tuple[int, Change]] = []
        by_name: dict[str, list[tuple[int, Record | None]]] = {}
        for change in changes:
            seq += 1
            numbered.append((seq, change))
            by_name.setdefault(change.collection, []).append((change.id, change.after))
        next_ids = {name: base.next_id(name) for name in self.collections}
        new_tables = dict(old.tables)
        for name, entries in by_name.items():
            new_tables[name] = old.tables[name].with_changes(entries, seq, next_ids.get(name, 1))
        for name, next_id in next_ids.items():
            table = new_tables[name]
            if next_id > table.next_id:
                new_tables[name] = Table(name, table.records, next_id, table.seq)
        new_snap = Snapshot(seq, new_tables)
        events = self._describe(changes, new_snap) if self._describe and changes else [None] * len(changes)
        # The writes and the COMMIT sent together, one round trip: the database lets go of the commit
        # lock as soon as the writes are in, not a round trip (and this thread's next turn at the
        # GIL) later. The records travel as parameters: never in a statement's text, which the
        # database shows in pg_stat_activity and writes to its log with an error.
        sends: list[Callable[[pq.abc.PGconn], None]] = []
        if numbered:
            rows = []
            for (number, change), event in zip(numbered, events, strict=True):
                row = {"seq": number, "collection": change.collection, "id": change.id}
                if change.after is not None:  # absent: the record was deleted
                    row["record"] = change.after
                if event is not None:
                    row["event"] = event
                rows.append(row)
            moved = {n: i for n, i in next_ids.items() if i > old.tables[n].next_id}
            params = [orjson.dumps(rows), orjson.dumps(moved), b"%d" % seq, CHANNEL.encode()]
            sends.append(lambda pgconn: pgconn.send_query_prepared(_COMMIT, params))
        if extra:
            sends.append(lambda pgconn: pgconn.send_query_params(extra.encode(), None))
        sends.append(lambda pgconn: pgconn.send_query_params(b"COMMIT", None))
        files_committed = self._push_files(conn, files)
        # Until the COMMIT the lock is held, so the database holds nothing but what new_snap does:
        # it is as fresh as a check sent at that moment (a request that joined the batch after the
        # lock was taken reads it with no check of its own).
        sent = time.monotonic()
        try:
            _pipelined(conn, sends)
        except psycopg.Error as exc:
            if conn.pgconn.status != pq.ConnStatus.BAD:  # refused by a database still there: not kept
                raise
            message = (
                f"The database connection broke while saving a change ({_reason(exc)}); whether it was kept is "
                "unknown: read it back before trying again"
            )
            raise CommitUnknownError(message) from exc
        except Exception as exc:  # anything else once the statements may have gone: not known either way
            message = (
                f"Saving a change failed ({_reason(exc)}); whether it was kept is unknown: read it back before "
                "trying again"
            )
            raise CommitUnknownError(message) from exc
        files_committed()
        with self._state:
            if self._snap is old:
                self._snap = new_snap
                self._remember_changes(numbered)
                self._checked(sent)  # (not when a reload replaced the snapshot meanwhile)

    @contextmanager
    def exclusive(self) -> Iterator[Snapshot]:
        """Hold the commit lock: no server commits while the block runs. The thread in the block
        may itself commit (with every write queued behind it), as with the files.

        :raises StoreUnavailableError: at a commit in the block, or at its end, when the lock could
            not be taken again after an earlier commit of the block (that commit stands).
        """
        with self._commit_mutex, self._conn_for(self._lock_and_catch_up, "_commit_conn") as conn:
            self._held, self._held_lost = conn, None
            try:
                yield self._snap
                self._still_held()
            finally:
                self._held, self._held_lost = None, None
                with suppress(psycopg.Error):  # a broken connection: _conn_for drops it
                    conn.rollback()

    def _lock_again(self, conn: psycopg.Connection) -> None:
        """In an exclusive() block: take the commit lock again once a commit (or its failure) ended
        the transaction that held it. When that fails, what was committed stays committed (its
        writers are told so); the block has lost the lock, which its next commit or its end raises."""
        try:
            conn.rollback()
            self._lock_and_catch_up(conn)
        except Exception as exc:  # noqa: BLE001 - kept and raised by _still_held
            log.warning("an exclusive block could not take the commit lock again: %s", _reason(exc))
            self._held_lost = exc
            with suppress(psycopg.Error):  # a lock granted before the catch-up failed is let go of now
                conn.rollback()

    def _still_held(self) -> None:
        """In an exclusive() block: raise when the block lost the commit lock (see _lock_again)."""
        lost = self._held_lost
        held = self._held
        if lost is None and held is not None and held.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
            lost = self._held_lost = StorageError("its transaction ended")
        if lost is not None:
            raise StoreUnavailableError(
                f"The commit lock was lost after a commit of this block ({_reason(lost)}); what followed it was not "
                "done under the lock"
            ) from lost

    # -- upkeep ----------------------------------------------------------------------------------

    def maintain(self, force: bool = False) -> None:
        """Follow the database, and drop the changes older than ``journal_keep`` (at most once a
        minute, unless ``force``)."""
        self.snapshot()
        now = time.monotonic()
        if not force and now - getattr(self, "_trimmed", 0.0) < 60:
            return
        self._trimmed = now
        try:
            with self._conn() as conn:
                seq = conn.execute("SELECT seq FROM library_seq").fetchone()[0]
                floor = seq - self._journal_keep
                if floor > 0:
                    conn.execute("BEGIN")
                    conn.execute("SET LOCAL lock_timeout = '1s'")
                    conn.execute("UPDATE library_seq SET floor = GREATEST(floor, %s)", (floor,))
                    conn.execute("DELETE FROM library_changes WHERE seq <= %s", (floor,))
                    conn.execute("COMMIT")
        except (StorageError, psycopg.Error) as exc:
            log.debug("maintenance: %s", exc)

    def start(self, interval: float = 0.25) -> None:
        """Follow the database in the background: a thread that LISTENs for commits (and looks at
        least every ``interval`` seconds), so this process's snapshot is fresh before it is asked."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._stop = threading.Event()
        ref = weakref.ref(self)
        stop = self._stop
        url = self.url

        def loop() -> None:
            conn: psycopg.Connection | None = None
            last = 0.0
            while not stop.is_set():
                latest, received = 0, None
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(url, autocommit=True, **_with_keepalives(url))
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    # Every notification that came in together makes one round: under a stream of
                    # commits, one catch-up per wake-up rather than one per commit.
                    for note in conn.notifies(timeout=interval, stop_after=1):
                        latest, received = _seq_of(note.payload), time.monotonic()
                    if received is not None:  # a request's check may take it in meanwhile
                        stop.wait(FOLLOW_DELAY)
                    for note in conn.notifies(timeout=0, stop_after=1000):
                        latest, received = max(latest, _seq_of(note.payload)), time.monotonic()
                except psycopg.Error:
                    if conn is not None:
                        with suppress(psycopg.Error):
                            conn.close()
                    conn = None
                    stop.wait(interval)
                store = ref()
                if store is None:
                    break
                # A commit that this process's snapshot already holds (its own, or one a request's
                # check took in) asks for nothing, unless the last round is an interval old; one
                # that it does not hold asks, unless a check sent since the notification came did.
                if 0 < latest <= store._snap.seq and time.monotonic() - last < interval:
                    del store
                    continue
                last = time.monotonic()
                try:
                    with reads_since(received) if received is not None else contextlib.nullcontext():
                        store.maintain()
                except Exception:  # the thread must outlive any one bad round
                    log.exception("storage maintenance failed")
                del store
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()

        self._worker = threading.Thread(target=loop, name="library-storage", daemon=True)
        self._worker.start()

    def _note_problem(self, exc: BaseException) -> None:
        reason = _reason(exc)
        self._problem = reason if isinstance(exc, StorageError) else f"The database cannot be reached: {reason}"

    def health(self) -> dict[str, Any]:
        self.snapshot()  # a check sent now, shared with the readers and health calls that wait for one
        problems = [{"file": "database", "problem": self._problem}] if self._problem else []
        return {
            "writable": not problems,
            "problems": problems,
            "seq": self._snap.seq,
            "backend": "postgresql",
            "schema_version": self.schema_version,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=2)
        if self._pool is not None and self._pool_pid == os.getpid():
            with suppress(Exception):
                if self._queue:
                    self._commit_queue()
                self._push_files_now()
            self._pool.close()
            self._pool = None
            for own in ("_check_conn", "_commit_conn"):
                conn = getattr(self, own)
                if conn is not None:
                    with suppress(psycopg.Error):
                        conn.close()
                    setattr(self, own, None)

    def remove_file(self, name: str) -> None:
        """See :meth:`Store.remove_file`: removed here now, from the database (a tombstone) at this
        process's next commit, and from every other server's folder when it catches up."""
        with self._state:
            (self.directory / name).unlink(missing_ok=True)
            self._removing.add(name)

    @contextmanager
    def sharing_files(self) -> Iterator[None]:
        """See :meth:`Store.sharing_files`: the block holds the commit lock, after a catch-up that
        wrote every file shared so far into ``directory`` (two servers starting at once on a new
        database make one signing key, not one each)."""
        with self.exclusive():
            yield
            self._push_files_now()

    def _push_files_now(self) -> None:
        with self._commit_mutex:
            held = self._held
            if held is not None:  # in exclusive(): commit in its transaction, then lock again
                self._still_held()
                try:
                    committed = self._push_files(held)
                    held.execute("COMMIT")
                    committed()
                finally:
                    self._lock_again(held)
                return
            with self._conn_for(self._lock_and_catch_up, "_commit_conn") as conn:
                committed = self._push_files(conn)
                conn.execute("COMMIT")
                committed()


def _seq_of(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:
        return 0


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
