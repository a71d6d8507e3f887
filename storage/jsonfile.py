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

Readers do not take the lock: one ``stat`` of the journal tells them whether anything was committed,
and they apply only the lines another process appended. The one exception is a journal another
process started again (a repair): what was committed since is only in the files that process wrote,
and those are read as one state under the lock. A short in-process mutex guards the in-memory
state; it is never held while waiting for the lock or for an fsync.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout

from storage import journal
from storage.base import Change, Describe, GroupCommit, Pending, Record, Snapshot, Table, Txn
from storage.errors import (
    CommitUnknownError,
    CorruptFileError,
    JournalTruncatedError,
    LockTimeoutError,
    StorageError,
    StoreUnavailableError,
)
from storage.files import (
    HEAD_NAME,
    JOURNAL_NAME,
    LOCK_NAME,
    RELOAD,
    Checkpoint,
    Validate,
    _File,
    _now,
    _read_all,
    _read_from,
)
from storage.journal import stat_of
from storage.upkeep import Upkeep

log = logging.getLogger("library_api.storage")


@dataclass
class _Health:
    journal_problem: str | None = None  # what is wrong with the journal, while writes wait
    problem_since: float = 0.0
    judged: tuple[int, int, str | None] | None = None  # (inode, size, verdict) of a file at its path


class JsonStore(Upkeep, GroupCommit):
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
        # across threads): the group-commit leader, holding the commit mutex while it waits for it.
        self._start_queue()
        # Guards the in-memory state; held only for memory work and short reads of the journal.
        self._state = threading.RLock()
        self._appending = False
        self.failed_commits = 0  # callers that keep state in step with commits compare this
        self._health = _Health()
        self._files = {name: _File() for name in self.collections}
        self._jfd = -1
        self._poisoned: str | None = None
        self._accept_lost_journal = False
        self._reload_after = 0.0  # a reader's reload failed: readers wait until then to try again
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
        self._start_queue()
        self._state = threading.RLock()
        self._appending = False
        self._worker = None
        self._stop = threading.Event()
        self._filelock = FileLock(self.directory / LOCK_NAME, thread_local=False)

    # -- the contract ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if not self._fresh():
            problem = None
            with self._state:
                if not self._appending:
                    try:
                        problem = self._catch_up(locked=False)
                    except (CorruptFileError, OSError) as exc:  # readers keep the last good state
                        self._note_journal_problem(f"unreadable ({exc})")
            if problem == RELOAD:
                self._reload()
        return self._snap

    def _reload(self) -> None:
        """Another process started the journal again (it repaired a damaged one): the commits
        acknowledged since are only in the files it wrote and in its new journal, so take them in
        now, under the lock, instead of answering from a state that lacks them. When that cannot be
        done, the last good state stays and the journal is reported as not followed (the background
        round tries again; readers after a second, so that they do not each wait for the lock)."""
        with self._commit_mutex:
            # Another thread of this process may have reloaded (or failed to) while this one waited.
            if self._fresh() or time.monotonic() < self._reload_after:
                return
            try:
                with self._locked():
                    self._catch_up(locked=True)
            except (StorageError, OSError) as exc:
                log.debug("%s: not reloaded yet: %s", self.journal_path, exc)
                self._reload_after = time.monotonic() + 1.0
                with self._state:
                    if not self._health.journal_problem:
                        self._note_journal_problem(RELOAD)

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
                    raise StoreUnavailableError(self._refusal(name))
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
        journal_name = self.journal_path.name
        if self._poisoned is not None:
            problems.append({"file": journal_name, "problem": self._poisoned})
        elif self._health.journal_problem:
            problems.append({"file": journal_name, "problem": f"{journal_name} was {self._health.journal_problem}"})
        for name, state in self._files.items():
            if state.problem:
                problems.append({"file": self._paths[name].name, "problem": self._refusal(name)})
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

    def _commit_batch(self, batch: list[Pending]) -> None:
        """See :meth:`GroupCommit._commit_batch`: under the directory's lock, one journal append
        and fsync for the whole batch."""
        try:
            with self._locked():
                self._catch_up(locked=True)
                self._check_files_locked()
                self._join_waiting(batch)
                base = Txn(self._snap)
                self._run_updaters(base, batch, self._refuse_unwritable)
                changes = base.changes()
                if changes:
                    self._commit(changes, {name: base.next_id(name) for name in self.collections})
        except BaseException:
            self.failed_commits += 1
            raise

    def _refuse_unwritable(self, txn: Txn) -> None:
        for collection in {c.collection for c in txn.changes()}:
            state = self._files[collection]
            if state.problem:
                raise StoreUnavailableError(self._refusal(collection))

    def _refusal(self, name: str) -> str:
        """Why changes to collection ``name`` are refused, naming its file (not where it lives:
        this goes out in answers)."""
        state, file = self._files[name], self._paths[name].name
        if state.problem == "missing":
            return f"{file} is missing: changes to it are refused until it is put back"
        error = state.error
        if isinstance(error, CorruptFileError):
            where = f" at line {error.line}" if error.line is not None else ""
            return f"{file}: {error.reason}{where}; changes to it are refused until the file is fixed"
        return f"{file} is {state.problem}: changes to it are refused"

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

    def _catch_up(self, locked: bool) -> str | None:
        """Apply what other processes committed. With the lock held, also cut off a torn tail and
        repair a journal that was deleted, truncated or replaced under the running server.

        :returns: None, or (without the lock) what is wrong with the journal: :data:`RELOAD` when
            another process started it again, which only a reload under the lock takes in.
        :raises StoreUnavailableError: (locked) when the journal was damaged and this process does
            not hold every committed change.
        """
        with self._state:
            problem = self._journal_state(locked)
            if problem is None:
                self._health.journal_problem = None
                return None
            if problem == RELOAD:
                return problem  # another process restarted the journal: see _reload
            self._note_journal_problem(problem)
            if locked:
                self._recover_journal(problem)
                return None
            return problem

    def _journal_state(self, locked: bool) -> str | None:
        """Follow the journal; returns None when it is sound, else what is wrong with it."""
        try:
            st = os.stat(self.journal_path)
        except FileNotFoundError:
            self._read_to_end()
            return "deleted"
        if st.st_ino != self._jino:
            self._read_to_end()
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

    def _read_to_end(self) -> None:
        """Take in the commits the journal this process has open holds past what it read, though
        that file is no longer the one at the journal's path (deleted, or replaced): they were
        acknowledged, and a process that had not looked since would otherwise go on answering
        without them. State mutex held."""
        with suppress(CorruptFileError, OSError):
            data = _read_from(self._jfd, self._joffset)
            parsed = journal.parse(data, self.journal_path, self._jline + 1, at_start=False)
            for commit in parsed.commits:
                self._apply_commit(commit)
            self._joffset += parsed.consumed
            self._jline += parsed.lines

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

    def _remember_events(self, events: list[tuple[int, dict[str, Any] | None]]) -> None:
        """Keep public events for the feed, encoded once, and count the journal's changes."""
        for seq, event in events:
            self._line_seqs.append(seq)
            if event is not None:
                self._event_seqs.append(seq)
                self._event_bytes.append(orjson.dumps({"seq": seq, **event}))

    def _reset_events(self, floor: int) -> None:
        self._floor = floor
        self._event_seqs: list[int] = []
        self._event_bytes: list[bytes] = []
        self._line_seqs: list[int] = []

    # -- a damaged journal ---------------------------------------------------------------------

    # -- collection files ----------------------------------------------------------------------

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

    # -- opening ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.directory.is_dir():
            # Taking the lock would create it again (filelock makes the lock file's folder), and
            # a repair would fill it from memory: on an unmounted volume, onto the wrong disk.
            raise StoreUnavailableError("The data directory is missing; writes wait until it is back")
        try:
            # A short poll keeps waiting writers from sleeping long past the moment the lock frees.
            self._filelock.acquire(timeout=self._lock_timeout, poll_interval=0.001)
        except Timeout as exc:
            raise LockTimeoutError(f"The data directory stayed locked for more than {self._lock_timeout:g} s") from exc
        try:
            yield
        finally:
            self._filelock.release()

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
