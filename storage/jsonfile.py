"""The JSON-file store: ``journal.jsonl`` is the commit, ``<collection>.json`` files are checkpoints.

How a write works (under ``library.lock``, one writer at a time across every process):

1. catch up with what other processes committed, and take in any hand edit of a collection file;
2. run the updater on that fresh state;
3. append its change lines and a commit line to the journal in one ``write`` and fsync: the commit
   point. The write is acknowledged; no collection file is rewritten.

The collection files are checkpoints of the journal, rewritten (temporary file, fsync, rename, fsync
the folder) in the background soon after writes stop, when the journal has grown past a threshold,
and at a clean shutdown. Each file's header ``seq`` is the last change it holds; start-up replays the
journal's later changes on top. Before a checkpoint renames a file into place it records the new
file's identity (inode, size, mtime, seq) in the journal, so every process can tell a checkpoint from
a person's edit, which is taken in like any change (see :meth:`JsonStore.maintain`).

Readers never take the lock: one ``stat`` of the journal tells them whether anything was committed,
and they apply only the lines another process appended. A short in-process mutex guards the
in-memory state; it is never held while waiting for the lock or for an fsync.
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from filelock import FileLock, Timeout

from storage import journal
from storage.base import Change, Describe, Record, Records, Snapshot, Store, Table, Txn
from storage.errors import (
    CommitUnknownError,
    CorruptFileError,
    JournalTruncatedError,
    LockTimeoutError,
    StorageError,
    StoreUnavailableError,
)
from storage.journal import FileStat, stat_of

T = TypeVar("T")
log = logging.getLogger("library_api.storage")

RELOAD = "restarted by another process"
JOURNAL_NAME = "journal.jsonl"
HEAD_NAME = ".journal.head"
LOCK_NAME = "library.lock"
CHANGES_KEPT = 4096  # record changes kept in memory for callers that maintain their own indexes

Validate = Callable[[str, Record], str | None]
"""Checks one record of a collection: None when it is fine, else what is wrong (naming the field)."""

Checkpoint = tuple[int, int, int, int]
"""A collection file as a checkpoint wrote it: (inode, size, mtime_ns, the seq in its header)."""


class _Pending:
    """One updater waiting to be committed, and then its result or error."""

    __slots__ = ("updater", "value", "error", "taken", "done")

    def __init__(self, updater: Callable[[Txn], Any]) -> None:
        self.updater = updater
        self.value: Any = None
        self.error: BaseException | None = None
        self.taken = False  # a committing thread has it
        self.done = threading.Event()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class _File:
    """What this process knows of one collection file."""

    expected: Checkpoint | None = None  # the last checkpoint recorded in the journal
    previous: Checkpoint | None = None  # the one before (its rename may not have happened yet)
    problem: str | None = None  # "missing" or "invalid" while writes to it are refused
    error: StorageError | None = None
    seen: FileStat | None = None  # the version judged invalid, not parsed again
    dirty_since: int | None = None  # first seq not in the file yet


@dataclass
class _Health:
    journal_problem: str | None = None  # what is wrong with the journal, while writes wait
    problem_since: float = 0.0
    judged: tuple[int, int, str | None] | None = None  # (inode, size, verdict) of a file at its path


class JsonStore(Store):
    """The collections of one data directory, kept as JSON files and a journal.

    :param directory: the data directory; created when missing.
    :param collections: the names of the collections (each is ``<name>.json``).
    :param describe: turns a transaction's changes into public events (see :data:`Describe`).
    :param initial: called with a :class:`Txn` once, when the directory is new, to fill it.
    :param validate: checks a record read from a collection file (see :data:`Validate`).
    :param lock_timeout: seconds to wait for the lock before :class:`LockTimeoutError`.
    :param journal_keep: how many changes the journal keeps (at least); older ones are dropped.
    :param checkpoint_changes: how many changes the journal may gain before the collection files
        are checkpointed even while writes go on.
    :param checkpoint_idle: seconds without a write after which changed files are checkpointed.
    :raises CorruptFileError: when a collection file cannot be read or is missing.
    :raises LockTimeoutError: when the lock could not be taken in time.
    """

    def __init__(
        self,
        directory: Path | str,
        collections: Sequence[str],
        *,
        describe: Describe | None = None,
        initial: Callable[[Txn], Any] | None = None,
        validate: Validate | None = None,
        lock_timeout: float = 10.0,
        journal_keep: int = 10_000,
        checkpoint_changes: int = 20_000,
        checkpoint_idle: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.collections = tuple(collections)
        self.journal_path = self.directory / JOURNAL_NAME
        self._head_path = self.directory / HEAD_NAME
        self._paths = {name: self.directory / f"{name}.json" for name in self.collections}
        self._describe = describe
        self._validate = validate
        self._journal_keep = max(1, journal_keep)
        self._checkpoint_changes = max(1, checkpoint_changes)
        self._checkpoint_idle = checkpoint_idle
        self._lock_timeout = lock_timeout
        # One thread of this process holds the file lock at a time (FileLock counts re-entries
        # across threads), and the group-commit leader holds this while it waits for it.
        self._commit_mutex = threading.RLock()
        # Guards the in-memory state; held only for memory work and short reads of the journal.
        self._state = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._appending = False
        self.failed_commits = 0  # callers that keep state in step with commits compare this
        self._health = _Health()
        self._files = {name: _File() for name in self.collections}
        self._jfd = -1
        self._poisoned: str | None = None
        self._lineage = ""
        self._closed = False
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._filelock = FileLock(self.directory / LOCK_NAME, thread_local=False)
        self._snap = Snapshot(0, {})
        with self._commit_mutex, self._locked():
            self._open_locked(initial)
        ref = weakref.ref(self)
        atexit.register(lambda: (store := ref()) is not None and store.close())
        os.register_at_fork(after_in_child=lambda: (store := ref()) is not None and store._after_fork())

    def _after_fork(self) -> None:
        """In a child process (gunicorn --preload): locks and threads are not inherited as they
        were, so take fresh ones; the journal's file descriptor stays valid."""
        self._commit_mutex = threading.RLock()
        self._state = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue = []
        self._appending = False
        self._worker = None
        self._stop = threading.Event()
        self._filelock = FileLock(self.directory / LOCK_NAME, thread_local=False)

    # -- the contract ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if not self._fresh():
            with self._state:
                if not self._appending:
                    try:
                        self._catch_up(locked=False)
                    except (CorruptFileError, OSError) as exc:  # readers keep the last good state
                        self._note_journal_problem(f"unreadable ({exc})")
        return self._snap

    @property
    def seq(self) -> int:
        """The sequence number of the last committed change."""
        return self.snapshot().seq

    def events_since(self, since: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        raw, last = self.raw_events_since(since, limit)
        return [orjson.loads(item) for _, item in raw], last

    def raw_events_since(self, since: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """Like :meth:`events_since`, but each event as its seq and its JSON bytes."""
        self.snapshot()
        with self._state:
            current = self._snap.seq
            if since < self._floor or since > current:
                raise JournalTruncatedError(
                    f"The journal holds the changes after seq {self._floor} up to {current}, not those "
                    f"after {since}; reload the catalogue and follow on from its ETag"
                )
            start = bisect.bisect_right(self._event_seqs, since)
            end = bisect.bisect_right(self._event_seqs, current)
            stop = min(start + limit, end)
            chosen = list(zip(self._event_seqs[start:stop], self._event_bytes[start:stop], strict=True))
            last = self._event_seqs[start + limit - 1] if start + limit < end else current
        return chosen, last

    def changes_between(self, since: int, until: int) -> list[tuple[int, Change]] | None:
        with self._state:
            if since < self._changes_floor or until > self._snap.seq:
                return None
            seqs = self._change_seqs
            lo = bisect.bisect_right(seqs, since)
            hi = bisect.bisect_right(seqs, until)
            return list(zip(seqs[lo:hi], self._change_list[lo:hi], strict=True))

    def update(self, updater: Callable[[Txn], T]) -> T:
        """See :meth:`Store.update`. Concurrent calls in one process are committed together: the
        thread that gets the lock runs every updater waiting at that moment, each in its own child
        transaction (so one that raises loses only its own changes), and appends them all with one
        journal fsync. Updaters must not call :meth:`update` themselves, and must take what they
        need as arguments: they may run on another thread."""
        pending = _Pending(updater)
        with self._queue_lock:
            self._queue.append(pending)
        with self._commit_mutex:
            if not pending.taken:
                self._commit_queue()
        pending.done.wait()
        return cast(T, pending.outcome())

    @contextmanager
    def exclusive(self) -> Iterator[Snapshot]:
        """Hold the data directory's lock with every collection file checkpointed: while it is held
        no process can commit, and the files on disk are the snapshot yielded.

        :raises LockTimeoutError: when the lock could not be taken in time.
        :raises StoreUnavailableError: when a collection file is missing or invalid.
        """
        with self._commit_mutex, self._locked():
            self._catch_up(locked=True)
            self._check_files_locked()
            for name, state in self._files.items():
                if state.problem:
                    raise state.error or StoreUnavailableError(f"{self._paths[name]} is {state.problem}")
            self._checkpoint_locked(force=True)
            yield self._snap

    def maintain(self, force: bool = False) -> None:
        """One round of the background work (the store's thread runs it every quarter second):
        follow the journal, take in hand edits of the collection files, repair a journal damaged
        under the running server, write the checkpoints that are due and compact the journal.

        :param force: checkpoint every changed file now, however recent the last write.
        """
        self.snapshot()
        if not (force or self._needs_lock()):
            return
        try:
            with self._commit_mutex, self._locked():
                self._catch_up(locked=True)
                self._check_files_locked()
                self._checkpoint_locked(force=force)
                self._compact_if_due()
        except LockTimeoutError:
            pass  # another process holds the lock; it or the next round will do it
        except StorageError as exc:
            log.debug("maintenance: %s", exc)

    def health(self) -> dict[str, Any]:
        """What stands in the way of writes: ``{"writable": bool, "problems": [...]}``, where each
        problem names the file and what is wrong with it."""
        problems = []
        if self._poisoned is not None:
            problems.append({"file": str(self.journal_path), "problem": self._poisoned})
        elif self._health.journal_problem:
            problems.append({"file": str(self.journal_path), "problem": self._health.journal_problem})
        for name, state in self._files.items():
            if state.problem:
                detail = str(state.error) if state.error else f"{self._paths[name]} is {state.problem}"
                problems.append({"file": str(self._paths[name]), "problem": detail})
        return {"writable": not problems, "problems": problems, "seq": self._snap.seq}

    def start(self, interval: float = 0.25) -> None:
        """Run :meth:`maintain` in a background thread of this process (idempotent)."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._stop.clear()
        ref = weakref.ref(self)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval):
                store = ref()
                if store is None:
                    return
                try:
                    store.maintain()
                except Exception:  # the thread must outlive any one bad round
                    log.exception("storage maintenance failed")
                del store

        self._worker = threading.Thread(target=loop, name="library-storage", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the background thread and checkpoint what is not yet in the files."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)
        try:
            if self.directory.exists():
                self.maintain(force=True)
        except Exception:  # noqa: BLE001 - shutting down: the journal holds every commit anyway
            log.exception("%s: could not write the checkpoints at shutdown", self.directory)
        if self._jfd >= 0:
            with suppress(OSError):
                os.close(self._jfd)
            self._jfd = -1

    # -- committing --------------------------------------------------------------------------

    def _commit_queue(self) -> None:
        """Run and commit every waiting updater, then wake their threads."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        for item in batch:
            item.taken = True
        try:
            with self._locked():
                self._catch_up(locked=True)
                self._check_files_locked()
                base = Txn(self._snap)
                for item in batch:
                    child = base.child()
                    try:
                        item.value = item.updater(child)
                        self._refuse_unwritable(child)
                    except BaseException as exc:  # the updater's own failure: only it is refused
                        item.error = exc
                    else:
                        base.merge(child)
                changes = base.changes()
                if changes:
                    self._commit(changes, {name: base.next_id(name) for name in self.collections})
        except BaseException as exc:  # nothing was committed: every updater in the batch fails
            self.failed_commits += 1
            for item in batch:
                if item.error is None:
                    item.error = exc
        finally:
            for item in batch:
                item.done.set()

    def _refuse_unwritable(self, txn: Txn) -> None:
        for collection in {c.collection for c in txn.changes()}:
            state = self._files[collection]
            if state.problem:
                raise StoreUnavailableError(
                    f"{self._paths[collection]} is {state.problem}, so changes to it are refused until it "
                    f"is back: {state.error or 'put the file back'}"
                )

    def _commit(
        self, changes: list[Change], next_ids: dict[str, int], files: dict[str, Checkpoint] | None = None
    ) -> None:
        """Append ``changes`` to the journal (the commit) and make them current. Lock held."""
        old = self._snap
        seq = old.seq
        numbered: list[tuple[int, Change]] = []
        by_name: dict[str, list[tuple[int, Record | None]]] = {}
        for change in changes:
            seq += 1
            numbered.append((seq, change))
            by_name.setdefault(change.collection, []).append((change.id, change.after))
        new_tables = dict(old.tables)
        for name, entries in by_name.items():
            new_tables[name] = old.tables[name].with_changes(entries, seq, next_ids.get(name, 1))
        for name, next_id in next_ids.items():
            table = new_tables[name]
            if next_id > table.next_id:
                new_tables[name] = Table(name, table.records, next_id, table.seq)
        new_snap = Snapshot(seq, new_tables)
        events = self._describe(changes, new_snap) if self._describe else [None] * len(changes)
        lines = [
            journal.encode_change(s, c.collection, c.id, c.after, e) for (s, c), e in zip(numbered, events, strict=True)
        ]
        lines.append(journal.encode_commit(seq, _now(), files or {}))
        payload = b"".join(lines)
        del lines

        def publish() -> None:
            self._snap = new_snap
            self._remember_events([(s, e) for (s, _), e in zip(numbered, events, strict=True)])
            self._remember_changes(numbered)
            for name in by_name:
                state = self._files[name]
                if state.dirty_since is None:
                    state.dirty_since = old.seq + 1
            self._since_checkpoint += len(numbered)
            self._last_write = time.monotonic()

        self._append_locked(payload, len(numbered) + 1, publish)
        self._write_head(seq)

    def _append(self, payload: bytes) -> str | None:
        """Append ``payload`` to the journal followed (checked by the caller) and fsync; undo it on
        any failure. Lock held. Returns None, or what happened to the journal meanwhile.

        :raises OSError: when it could not be written and synced (nothing was committed).
        """
        if self._poisoned is not None:
            raise StoreUnavailableError(self._poisoned)
        start = self._joffset
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(self._jfd, view) :]
        except BaseException:
            # Not all of it was written, so no commit line: nobody can have taken it in.
            with suppress(OSError):
                os.ftruncate(self._jfd, start)
            raise
        try:
            os.fsync(self._jfd)
        except OSError as exc:
            # Written but not known to be on disk; another process may already have read it.
            # Its outcome is unknown, so this process neither undoes it nor commits again
            # (a restarted process replays whatever the disk kept).
            self._poisoned = (
                f"The disk reported an error while saving a change ({exc.strerror}); whether it was kept is "
                "unknown. This worker takes no more writes: restart the server (it replays what the disk kept)"
            )
            self._health.journal_problem = f"fsync failed ({exc.strerror})"
            log.critical("%s: %s", self.journal_path, self._poisoned)
            raise CommitUnknownError(self._poisoned) from exc
        st = os.fstat(self._jfd)
        if st.st_nlink == 0 or stat_of(self.journal_path) is None:
            return "deleted"
        if st.st_size != start + len(payload):
            return "truncated"
        return None

    # -- reading the journal -------------------------------------------------------------------

    def _fresh(self) -> bool:
        """Whether nothing was committed since this process last looked (one stat call)."""
        try:
            st = os.stat(self.journal_path)
        except OSError:
            return False
        return st.st_ino == self._jino and st.st_size == self._joffset and not self._health.journal_problem

    def _catch_up(self, locked: bool) -> None:
        """Apply what other processes committed. With the lock held, also cut off a torn tail and
        repair a journal that was deleted, truncated or replaced under the running server.

        :raises StoreUnavailableError: (locked) when the journal was damaged and this process does
            not hold every committed change.
        """
        with self._state:
            problem = self._journal_state(locked)
            if problem is None:
                self._health.journal_problem = None
                return
            if problem == RELOAD:
                return  # another process restarted the journal: the next locked round reloads
            self._note_journal_problem(problem)
            if locked:
                self._recover_journal(problem)

    def _journal_state(self, locked: bool) -> str | None:
        """Follow the journal; returns None when it is sound, else what is wrong with it."""
        try:
            st = os.stat(self.journal_path)
        except FileNotFoundError:
            return "deleted"
        if st.st_ino != self._jino:
            judged = self._health.judged
            if not locked and judged is not None and judged[:2] == (st.st_ino, st.st_size):
                return judged[2]
            verdict = self._follow_new_journal(st, locked)
            self._health.judged = (st.st_ino, st.st_size, verdict)
            return verdict
        if st.st_size < self._joffset:
            return "truncated"
        if os.pread(self._jfd, len(self._jheader), 0) != self._jheader:
            return "its header was overwritten"
        if st.st_size > self._joffset:
            data = os.pread(self._jfd, st.st_size - self._joffset, self._joffset)
            parsed = journal.parse(data, self.journal_path, self._jline + 1, at_start=False)
            for commit in parsed.commits:
                self._apply_commit(commit)
            self._joffset += parsed.consumed
            self._jline += parsed.lines
            if parsed.consumed < len(data) and locked:
                # Nobody writes while we hold the lock: these bytes are a writer's torn tail.
                log.warning("%s: cutting off an interrupted write at its end", self.journal_path)
                os.ftruncate(self._jfd, self._joffset)
        return None

    def _follow_new_journal(self, st: os.stat_result, locked: bool) -> str | None:
        """Another file is at the journal's path: a compaction or recovery by another process
        (follow it), or something a person put there (a problem)."""
        head = self._read_head()  # before the bytes: the hint is written after each append
        try:
            fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return "deleted"
        try:
            data = _read_all(fd)
            parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        except (CorruptFileError, OSError):
            os.close(fd)
            return "replaced by a file that is not a journal"
        if parsed.floor is None:
            os.close(fd)
            return "replaced by a file that is not a journal"
        last = max([parsed.floor, *(c.seq for c in parsed.commits)])
        if parsed.lineage != self._lineage or parsed.floor > self._snap.seq:
            # Started again by another process (a repair, a restore): its seqs are not this
            # process's history, so it reloads from the checkpoints that journal starts from.
            os.close(fd)
            if not locked:
                return RELOAD
            log.warning("%s started again in another process; reloading from the collection files", self.journal_path)
            self._open_state(False)
            return None
        if last < max(self._snap.seq, head):
            os.close(fd)
            return "replaced by an older journal"
        self._health.judged = None
        old_fd = self._jfd
        self._adopt_journal(fd, data, parsed)
        with suppress(OSError):
            os.close(old_fd)
        return None

    def _adopt_journal(self, fd: int, data: bytes, parsed: journal.ParsedJournal) -> None:
        """Follow the journal open at ``fd`` (its bytes ``data``): apply its commits after ours and
        take its events as the feed."""
        floor = parsed.floor or 0
        self._reset_events(floor)
        self._lineage = parsed.lineage
        for commit in parsed.commits:
            if commit.seq > self._snap.seq and commit.lines:
                self._apply_commit(commit)
            else:
                self._note_files(commit)
                self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
        self._jfd = fd
        st = os.fstat(fd)
        self._jino = st.st_ino
        self._joffset = parsed.consumed
        self._jline = parsed.lines
        self._jheader = data[: data.find(b"\n") + 1]
        self._changes_floor = max(self._changes_floor, self._snap.seq)
        self._change_seqs.clear()
        self._change_list.clear()

    def _apply_commit(self, commit: journal.Commit) -> None:
        """Take in a transaction committed by another process. State mutex held."""
        old = self._snap
        new_tables = dict(old.tables)
        changes: list[tuple[int, Change]] = []
        grouped: dict[str, list[tuple[int, Record | None]]] = {}
        for line in commit.lines:
            name = line.get("collection")
            if name not in new_tables:
                continue
            record = None if line.get("op") == "delete" else line["record"]
            before = old.tables[name].records.get(line["id"])
            # Several lines of one commit may touch one record: its "before" is the one in between.
            for _, earlier in reversed(changes):
                if earlier.collection == name and earlier.id == line["id"]:
                    before = earlier.after
                    break
            changes.append((line["seq"], Change(name, line["id"], before, record)))
            grouped.setdefault(name, []).append((line["id"], record))
            state = self._files[name]
            if state.dirty_since is None:
                state.dirty_since = line["seq"]
        for name, entries in grouped.items():
            new_tables[name] = old.tables[name].with_changes(entries, commit.seq)
        self._snap = Snapshot(max(old.seq, commit.seq), new_tables)
        self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
        self._remember_changes(changes)
        self._note_files(commit)
        if commit.lines:
            self._since_checkpoint += len(commit.lines)
            self._last_write = time.monotonic()

    def _note_files(self, commit: journal.Commit) -> None:
        """Take in the checkpoints a commit line records: those files now hold every change up to it."""
        for name, st in commit.files.items():
            state = self._files.get(name)
            if state is None or len(st) != 4:
                continue
            checkpoint = cast(Checkpoint, tuple(st))
            if checkpoint != state.expected:
                state.previous, state.expected = state.expected, checkpoint
            # The file holds every change up to the seq in its header; later ones only the journal.
            table = self._snap.tables.get(name)
            state.dirty_since = None if table is None or checkpoint[3] >= table.seq else checkpoint[3] + 1
            if not commit.lines:
                self._since_checkpoint = 0

    def _remember_events(self, events: list[tuple[int, dict[str, Any] | None]]) -> None:
        """Keep public events for the feed, encoded once, and count the journal's changes."""
        for seq, event in events:
            self._line_seqs.append(seq)
            if event is not None:
                self._event_seqs.append(seq)
                self._event_bytes.append(orjson.dumps({"seq": seq, **event}))

    def _remember_changes(self, changes: list[tuple[int, Change]]) -> None:
        """Keep record changes for :meth:`changes_between`."""
        for seq, change in changes:
            self._change_seqs.append(seq)
            self._change_list.append(change)
        if len(self._change_seqs) > 2 * CHANGES_KEPT:
            cut = len(self._change_seqs) - CHANGES_KEPT
            self._changes_floor = self._change_seqs[cut - 1]
            del self._change_seqs[:cut], self._change_list[:cut]

    def _reset_events(self, floor: int) -> None:
        self._floor = floor
        self._event_seqs: list[int] = []
        self._event_bytes: list[bytes] = []
        self._line_seqs: list[int] = []

    # -- a damaged journal ---------------------------------------------------------------------

    def _note_journal_problem(self, problem: str) -> None:
        if self._health.journal_problem != problem:
            log.error(
                "%s was %s under the running server; writes wait until it is repaired", self.journal_path, problem
            )
            self._health.journal_problem = problem
            self._health.problem_since = time.monotonic()

    def _recover_journal(self, problem: str) -> None:
        """Start a new journal from this process's memory, after writing every collection into
        a checkpoint. Only when this process holds every committed change (or nobody came forward
        with them for a while). Lock and state mutex held.

        :raises StoreUnavailableError: when another process may hold changes this one lacks.
        """
        if problem == "deleted" and self._jfd >= 0:
            # The file is gone from the folder but still open here: read what it still holds.
            with suppress(CorruptFileError, OSError):
                data = _read_from(self._jfd, self._joffset)
                parsed = journal.parse(data, self.journal_path, self._jline + 1, at_start=False)
                for commit in parsed.commits:
                    self._apply_commit(commit)
                self._joffset += parsed.consumed
        head = self._read_head()
        waited = time.monotonic() - self._health.problem_since
        if head > self._snap.seq and waited < 10:
            raise StoreUnavailableError(
                f"{self.journal_path} was {problem} under the running server; the worker that holds change "
                f"{head} is repairing it (this one has {self._snap.seq}). Try again in a moment"
            )
        if head > self._snap.seq:
            log.error(
                "%s: changes %d to %d were only in the damaged journal and are lost",
                self.journal_path,
                self._snap.seq + 1,
                head,
            )
        for name in self.collections:
            state = self._files[name]
            if state.problem == "invalid":
                aside = self._paths[name].with_name(f"{self._paths[name].name}.rejected-{_stamp()}")
                with suppress(OSError):
                    os.replace(self._paths[name], aside)
                    log.warning("%s: the invalid edit is kept as %s", self._paths[name], aside)
        checkpoints = {name: self._write_checkpoint(name) for name in self.collections}
        seq = self._snap.seq
        header = journal.encode_header(seq)
        journal.write_atomically(self.journal_path, [header, journal.encode_commit(seq, _now(), checkpoints)])
        for name, checkpoint in checkpoints.items():
            state = self._files[name]
            state.previous, state.expected = state.expected, checkpoint
            state.problem, state.error, state.seen, state.dirty_since = None, None, None, None
        fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND)
        data = _read_all(fd)
        with suppress(OSError):
            os.close(self._jfd)
        self._changes_floor = seq
        self._adopt_journal(fd, data, journal.parse(data, self.journal_path, 1, at_start=True))
        self._since_checkpoint = 0
        self._write_head(seq)
        log.warning(
            "%s was %s under the running server; every change up to seq %d was written into the collection "
            "files and a new journal started (live clients reload)",
            self.journal_path, problem, seq,
        )  # fmt: skip
        self._health.journal_problem = None

    # -- collection files ----------------------------------------------------------------------

    def _needs_lock(self) -> bool:
        """Whether :meth:`maintain` has anything to do that needs the lock."""
        if self._health.journal_problem:
            return True
        for name, state in self._files.items():
            if state.dirty_since is not None and not state.problem:
                idle = time.monotonic() - self._last_write >= self._checkpoint_idle
                if idle or self._since_checkpoint >= self._checkpoint_changes:
                    return True
            now = stat_of(self._paths[name])
            if _known(now, state):
                if state.problem:
                    return True  # back as it was: writes to it may resume
                continue
            if state.problem == "missing" and now is None:
                continue
            if state.problem == "invalid" and now == state.seen:
                continue
            return True
        return self._compaction_due()

    def _check_files_locked(self) -> None:
        """Notice missing files and take in edited ones (lock held, caught up)."""
        for name, path in self._paths.items():
            state = self._files[name]
            now = stat_of(path)
            if _known(now, state):
                if state.problem:
                    log.warning("%s is back as it was; writes to it resume", path)
                state.problem, state.error, state.seen = None, None, None
                if state.previous is not None and not _same(now, state.expected) and _same(now, state.previous):
                    # The last checkpoint was recorded but its rename never happened (its writer
                    # died): the file holds less than the journal says, so it is behind again.
                    log.warning("%s: the last checkpoint was not put in place; it is written again", path)
                    state.expected, state.previous = state.previous, None
                    if state.expected[3] < self._snap.tables[name].seq:
                        state.dirty_since = state.expected[3] + 1
                continue
            if now is None:
                if state.problem != "missing":
                    log.error("%s is missing; the server keeps what it holds and refuses changes to it", path)
                state.problem, state.seen = "missing", None
                state.error = StoreUnavailableError(
                    f"{path} is missing; put it back (changes to it are refused until then)"
                )
                continue
            if state.problem == "invalid" and now == state.seen:
                continue
            try:
                self._take_in(name, now)
            except CorruptFileError as exc:
                if state.problem != "invalid" or state.seen != now:
                    log.error("%s", exc)
                state.problem, state.error, state.seen = "invalid", exc, now
            else:
                if state.problem:
                    log.warning("%s can be read again; writes to it resume", path)
                state.problem, state.error, state.seen = None, None, None

    def _take_in(self, name: str, now: FileStat) -> None:
        """A person saved a collection file: apply what they changed, relative to the version of the
        file they opened, on top of the current state, and journal it like any change.

        :raises CorruptFileError: when the file cannot be read, breaks the schema, or is older than
            the journal reaches back.
        """
        path = self._paths[name]
        edited, header_seq = self._parse_file(name)
        current = self._snap.tables[name]
        state = self._files[name]
        base_seq = header_seq if header_seq is not None else current.seq
        later = self._changed_after(name, base_seq)
        if later is None:
            raise CorruptFileError(
                path, 1, None,
                f'its "seq" ({base_seq}) is older than the journal reaches (seq {self._floor}), so the changes '
                "made since then cannot be kept apart from the edit; make the edit on the current file, or delete "
                'the "seq" from its first line to have it applied on top of the current state',
            )  # fmt: skip
        changes = []
        for rid, record in edited.records.items():
            if rid in later:
                continue  # changed by a write the person did not see: that write stands
            before = current.records.get(rid)
            if before != record:
                changes.append(Change(name, rid, before, record))
        for rid, record in current.records.items():
            if rid not in edited.records and rid not in later:
                changes.append(Change(name, rid, record, None))
        next_ids = {n: t.next_id for n, t in self._snap.tables.items()}
        next_ids[name] = max(current.next_id, edited.next_id)
        checkpoint = (*now, base_seq)
        log.warning("%s was edited: %d record(s) changed", path, len(changes))
        if changes or next_ids[name] != current.next_id:
            self._commit(changes, next_ids, files={name: checkpoint})
        else:
            journal_line = journal.encode_commit(self._snap.seq, _now(), {name: checkpoint})
            self._append_checkpoint_line(journal_line)
        state.previous, state.expected = state.expected, checkpoint
        # The file holds the person's version: the journal's later lines stay until a checkpoint.
        if base_seq < self._snap.tables[name].seq:
            state.dirty_since = base_seq + 1
            self._last_write = 0.0  # checkpoint it at the next round
        else:
            state.dirty_since = None

    def _changed_after(self, name: str, seq: int) -> set[int] | None:
        """Ids of ``name`` that commits after ``seq`` changed (read from the journal), or None when
        the journal no longer reaches back that far."""
        if seq >= self._snap.tables[name].seq:
            return set()
        if seq < self._floor:
            return None
        data = _read_from(self._jfd, 0)[: self._joffset]
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        return {
            line["id"]
            for commit in parsed.commits
            for line in commit.lines
            if line.get("collection") == name and line["seq"] > seq
        }

    def _parse_file(self, name: str) -> tuple[Table, int | None]:
        """The collection file as a table, and the seq its header names (None when it has none).

        :raises CorruptFileError: naming the line and field of the first problem.
        """
        path = self._paths[name]
        data = path.read_bytes()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptFileError(path, exc.lineno, exc.colno, f"not valid JSON ({exc.msg})") from None
        header_seq, next_id = None, 1
        if isinstance(doc, dict) and isinstance(doc.get(name), list):
            items = doc[name]
            header_seq = doc["seq"] if type(doc.get("seq")) is int else None
            next_id = doc["next_id"] if type(doc.get("next_id")) is int else 1
        elif isinstance(doc, list):
            items = doc
        else:
            raise CorruptFileError(path, 1, 1, f'expected a list of records or an object with a "{name}" list')
        pairs: list[tuple[int, Record]] = []
        seen: set[int] = set()
        for index, item in enumerate(items):
            rid = item.get("id") if isinstance(item, dict) else None
            problem = None
            if not isinstance(item, dict):
                problem = f"record {index + 1} is not an object"
            elif type(rid) is not int or rid < 1:
                problem = f'record {index + 1}: "id" must be a positive whole number'
            elif rid in seen:
                problem = f'record {index + 1}: "id" {rid} is used by two records'
            elif self._validate is not None:
                found = self._validate(name, item)
                if found:
                    problem = f"record {index + 1} (id {rid}): {found}"
            if problem:
                lines = item_lines(data.decode("utf-8", "replace"), name if isinstance(doc, dict) else None)
                raise CorruptFileError(path, lines[index] if index < len(lines) else None, None, problem)
            seen.add(rid)
            pairs.append((rid, item))
        records = Records.from_items(pairs)
        next_id = max(next_id, records.last_id() + 1)
        return Table(name, records, next_id, header_seq or 0), header_seq

    def _checkpoint_locked(self, force: bool = False) -> None:
        """Write the collection files that lag the journal (when due, or all with ``force``)."""
        idle = time.monotonic() - self._last_write >= self._checkpoint_idle
        if not (force or idle or self._since_checkpoint >= self._checkpoint_changes):
            return
        names = [n for n, s in self._files.items() if s.dirty_since is not None and not s.problem]
        if not names:
            return
        temps = {name: self._write_temp(name) for name in names}
        checkpoints = {name: checkpoint for name, (_, checkpoint) in temps.items()}
        try:
            # Recorded before the renames: whichever file a crash leaves in place is known.
            self._append_checkpoint_line(journal.encode_commit(self._snap.seq, _now(), checkpoints))
        except BaseException:
            for tmp, _ in temps.values():
                tmp.unlink(missing_ok=True)
            raise
        for name, (tmp, checkpoint) in temps.items():
            os.replace(tmp, self._paths[name])
            state = self._files[name]
            state.previous, state.expected = state.expected, checkpoint
            state.dirty_since = None
        journal.fsync_dir(self.directory)
        self._since_checkpoint = 0

    def _write_checkpoint(self, name: str) -> Checkpoint:
        tmp, checkpoint = self._write_temp(name)
        os.replace(tmp, self._paths[name])
        journal.fsync_dir(self.directory)
        return checkpoint

    def _write_temp(self, name: str) -> tuple[Path, Checkpoint]:
        table = self._snap.tables[name]
        path = self._paths[name]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in _encode_table(table):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp, (st.st_ino, st.st_size, st.st_mtime_ns, table.seq)

    def _append_checkpoint_line(self, line: bytes) -> None:
        self._append_locked(line, 1)

    def _append_locked(self, payload: bytes, lines: int, publish: Callable[[], None] | None = None) -> None:
        """Append ``payload`` (``lines`` lines) to the journal, then make it current with
        ``publish``; readers of this process do not read it meanwhile. Lock held.

        :raises OSError: when it could not be written (nothing was committed).
        """
        with self._state:
            self._appending = True
        try:
            problem = self._append(payload)
        except BaseException:
            with self._state:
                self._appending = False
            raise
        # Committed: from here on nothing may report the write as failed.
        with self._state:
            self._joffset += len(payload)
            self._jline += lines
            self._appending = False
            if publish is not None:
                publish()
            if problem is not None:
                # The journal was deleted or truncated while this went on: this process holds
                # every commit, this one included, and writes them into new checkpoints now.
                self._note_journal_problem(problem)
                try:
                    self._recover_journal(problem)
                except (OSError, StorageError):
                    log.exception("%s: could not be repaired yet; the next round tries again", self.journal_path)

    # -- compaction ------------------------------------------------------------------------------

    def _compaction_due(self) -> bool:
        return len(self._line_seqs) > 2 * self._journal_keep

    def _compact_if_due(self) -> None:
        """Drop the oldest changes from the journal, keeping ``journal_keep`` and every change a
        collection file does not hold yet. Lock held, caught up, checkpoints written."""
        if not self._compaction_due():
            return
        floor = self._line_seqs[-self._journal_keep - 1]
        for name, state in self._files.items():
            if state.dirty_since is not None:
                floor = min(floor, state.dirty_since - 1)
            # Never past what the file actually on disk holds, whatever the journal recorded.
            now = stat_of(self._paths[name])
            held = next((c[3] for c in (state.expected, state.previous) if _same(now, c)), None)
            if held is None and state.expected is not None:
                held = min(state.expected[3], state.previous[3] if state.previous else state.expected[3])
            if held is not None and held < self._snap.tables[name].seq:
                floor = min(floor, held)
        if floor <= self._floor:
            return
        data = _read_from(self._jfd, 0)[: self._joffset]
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        del data
        chunks = [journal.encode_header(floor, self._lineage)]
        for commit in parsed.commits:
            kept = [line for line in commit.lines if line["seq"] > floor]
            if kept:
                chunks.extend(orjson.dumps(line) + b"\n" for line in kept)
                chunks.append(journal.encode_commit(commit.seq, _now(), commit.files))
        files = {n: s.expected for n, s in self._files.items() if s.expected is not None}
        chunks.append(journal.encode_commit(self._snap.seq, _now(), files))
        del parsed
        journal.write_atomically(self.journal_path, chunks)
        fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND)
        data = _read_all(fd)
        with self._state:
            old_fd = self._jfd
            seqs = self._snap.seq
            self._adopt_journal(fd, data, journal.parse(data, self.journal_path, 1, at_start=True))
            self._changes_floor = seqs
        with suppress(OSError):
            os.close(old_fd)
        log.info("%s: compacted to the changes after seq %d", self.journal_path, floor)

    # -- opening ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            # A short poll keeps waiting writers from sleeping long past the moment the lock frees.
            self._filelock.acquire(timeout=self._lock_timeout, poll_interval=0.001)
        except Timeout as exc:
            raise LockTimeoutError(f"The data directory stayed locked for more than {self._lock_timeout:g} s") from exc
        try:
            yield
        finally:
            self._filelock.release()

    def _open_locked(self, initial: Callable[[Txn], Any] | None = None) -> None:
        """Build every bit of state from disk, repairing what a crash left. Lock held."""
        with self._state:
            self._open_state(initial is not None)
        if self._fresh_directory and initial is not None:
            txn = Txn(self._snap)
            initial(txn)
            changes = txn.changes()
            if changes:
                self._commit(changes, {name: txn.next_id(name) for name in self.collections})
                self._checkpoint_locked(force=True)

    def _open_state(self, may_fill: bool) -> None:
        existing = {name: stat_of(path) for name, path in self._paths.items()}
        data = b""
        restart_reason = None
        if self.journal_path.exists():
            data = self.journal_path.read_bytes()
        try:
            parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        except CorruptFileError as exc:
            aside = self.journal_path.with_name(f"{JOURNAL_NAME}.damaged-{_stamp()}")
            os.replace(self.journal_path, aside)
            log.error("%s; it was moved to %s and a new journal starts from the collection files", exc, aside)
            restart_reason = "damaged"
            parsed = journal.ParsedJournal(floor=None)
            data = b""
        if parsed.consumed < len(data):
            log.warning("%s: cutting off an interrupted write at its end", self.journal_path)
            os.truncate(self.journal_path, parsed.consumed)
        if parsed.floor is None and data == b"" and self.journal_path.exists() and restart_reason is None:
            restart_reason = "empty"
        self._fresh_directory = parsed.floor is None and restart_reason is None and not any(existing.values())
        floor = parsed.floor or 0
        seq = max([floor, *(c.seq for c in parsed.commits)])
        recorded: dict[str, list[Checkpoint]] = {}
        for commit in parsed.commits:
            for name, st in commit.files.items():
                if name in self._paths:
                    recorded.setdefault(name, []).append(cast(Checkpoint, tuple(st)))
        lines_by_name: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for commit in parsed.commits:
            for line in commit.lines:
                lines_by_name.setdefault(line.get("collection"), []).append((commit.seq, line))
        tables: dict[str, Table] = {}
        dirty: set[str] = set()
        edited: list[str] = []
        for name, path in self._paths.items():
            known = recorded.get(name, [])
            lines = lines_by_name.get(name, [])
            if existing[name] is None:
                if known and parsed.floor is not None:
                    raise CorruptFileError(
                        path, None, None,
                        "is missing, though the journal says it was written; put it back (or restore a backup)",
                    )  # fmt: skip
                table = Table(name, Records(), 1, 0)
                header_seq: int | None = 0
            else:
                table, header_seq = self._parse_file(name)
            if header_seq is None:
                header_seq = known[-1][3] if known and len(known[-1]) == 4 else table.seq
            is_known = any(_same(existing[name], k) for k in known[-2:])
            if existing[name] is not None and known and not is_known:
                edited.append(name)
            elif existing[name] is not None and not known and parsed.floor is not None and parsed.commits:
                edited.append(name)  # a file the journal never wrote appeared
            newest = known[-1][3] if known and len(known[-1]) == 4 else None
            if name in edited and header_seq < floor and (newest is None or header_seq < newest):
                raise CorruptFileError(
                    path, 1, None,
                    f'its "seq" ({header_seq}) is older than the journal reaches (seq {floor}); changes made since '
                    'then would be lost. Put back the current file, or delete the "seq" from its first line to '
                    "have it applied on top of the journal",
                )  # fmt: skip
            later = [(cseq, ln) for cseq, ln in lines if ln["seq"] > header_seq]
            if later:
                entries = [(ln["id"], None if ln.get("op") == "delete" else ln["record"]) for _, ln in later]
                table = table.with_changes(entries, max(cseq for cseq, _ in later))
                dirty.add(name)
            tables[name] = table
            seq = max(seq, table.seq)
        restart = restart_reason is not None or bool(edited)
        if edited:
            # Changed while no server watched: what changed is unknown, so the journal starts again
            # after a new seq and clients that were following it are told to reload.
            seq += 1
            log.warning(
                "%s: %s changed while the server was stopped; the journal starts again",
                self.directory,
                ", ".join(edited),
            )
            tables = {n: Table(n, t.records, t.next_id, seq) for n, t in tables.items()}
            dirty = set(self.collections)
        elif restart_reason == "empty":
            log.warning("%s was empty; a new journal starts from the collection files", self.journal_path)
        self._snap = Snapshot(seq, tables)
        self._floor = floor
        self._changes_floor = seq
        self._change_seqs: list[int] = []
        self._change_list: list[Change] = []
        self._since_checkpoint = 0
        self._last_write = 0.0
        for name in self.collections:
            state = self._files[name]
            known = recorded.get(name, [])
            state.previous = known[-2] if len(known) > 1 and len(known[-2]) == 4 else None
            state.expected = known[-1] if known and len(known[-1]) == 4 else None
            if existing[name] is not None and state.expected is None and not restart:
                # A file the journal has no checkpoint of (a new directory, or an older version's
                # journal): its identity is recorded by the checkpoint below.
                dirty.add(name)
            state.problem, state.error, state.seen, state.dirty_since = None, None, None, None
        checkpoints: dict[str, Checkpoint] = {}
        for name in sorted(dirty):
            if existing[name] is not None or tables[name].records or restart:
                checkpoints[name] = self._write_checkpoint(name)
        self._remove_orphans()
        if parsed.floor is None or restart:
            header = journal.encode_header(seq)
            journal.write_atomically(self.journal_path, [header, journal.encode_commit(seq, _now(), checkpoints)])
        elif checkpoints:
            journal.append(self.journal_path, journal.encode_commit(seq, _now(), checkpoints))
        for name, checkpoint in checkpoints.items():
            state = self._files[name]
            state.previous, state.expected = state.expected, checkpoint
        fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND)
        if self._jfd >= 0:
            with suppress(OSError):
                os.close(self._jfd)
        self._jfd = fd
        data = _read_all(fd)
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        self._reset_events(parsed.floor or 0)
        self._lineage = parsed.lineage
        for commit in parsed.commits:
            self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
        st = os.fstat(fd)
        self._jino = st.st_ino
        self._joffset = parsed.consumed
        self._jline = parsed.lines
        self._jheader = data[: data.find(b"\n") + 1]
        self._health.journal_problem = None
        self._write_head(seq)

    def _remove_orphans(self) -> None:
        for tmp in self.directory.glob(".*.tmp"):
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)

    # -- the head hint -----------------------------------------------------------------------------

    def _write_head(self, seq: int) -> None:
        """Note the last committed seq beside the journal (not synced: a hint that tells, when the
        journal is damaged under running servers, which one holds every change)."""
        try:
            fd = os.open(self._head_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, f"{seq:020d}\n".encode(), 0)
            finally:
                os.close(fd)
        except OSError:
            pass

    def _read_head(self) -> int:
        try:
            return int(self._head_path.read_bytes()[:20] or 0)
        except (OSError, ValueError):
            return 0


def _known(now: FileStat | None, state: _File) -> bool:
    """Whether the file at a collection's path is one the journal recorded (or, before the first
    checkpoint, still absent)."""
    if state.expected is None:
        return now is None
    return _same(now, state.expected) or _same(now, state.previous)


def _same(now: FileStat | None, checkpoint: Checkpoint | tuple[int, ...] | None) -> bool:
    return now is not None and checkpoint is not None and tuple(checkpoint[:3]) == now


def _read_all(fd: int) -> bytes:
    return _read_from(fd, 0)


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _encode_table(table: Table) -> Iterator[bytes]:
    """The collection file: a small header, then one record per line, in id order."""
    name = json.dumps(table.name)
    yield f'{{"seq": {table.seq}, "next_id": {table.next_id}, {name}: ['.encode()
    batch: list[bytes] = []
    first = True
    for record in table.records.values():
        batch.append(orjson.dumps(record))
        if len(batch) >= 1024:
            yield (b"\n" if first else b",\n") + b",\n".join(batch)
            batch, first = [], False
    if batch:
        yield (b"\n" if first else b",\n") + b",\n".join(batch)
    yield b"\n]}\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


_ARRAY_GAP = re.compile(r"[\s,]*")


def item_lines(text: str, key: str | None) -> list[int]:
    """The 1-based line on which each item of a JSON array starts: the top-level array when ``key``
    is None, else the array under ``"key"``. Used to point at a bad record."""
    if key is None:
        start = text.find("[")
    else:
        match = re.search(rf'"{re.escape(key)}"\s*:\s*\[', text)
        start = match.end() - 1 if match else -1
    if start < 0:
        return []
    decoder = json.JSONDecoder()
    lines: list[int] = []
    line, counted, pos = 1, 0, start + 1
    while True:
        pos = _ARRAY_GAP.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return lines
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return lines
