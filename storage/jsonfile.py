"""The JSON-file store: one ``<collection>.json`` per collection, ``journal.jsonl``, one lock.

How a write works (always under ``library.lock``, one writer at a time across every process):

1. catch up with what other processes committed, finish what a crashed writer left half done, and
   take in any hand edit of a collection file;
2. run the updater on that fresh state;
3. write each changed collection to a temporary file in the data directory and fsync it;
4. append the change lines and a commit line to the journal and fsync it: the commit point;
5. rename the temporary files over the collection files and fsync the directory.

A crash before 4 leaves only orphan temporary files (removed at start-up); a crash after 4 leaves a
collection file one transaction behind its journal, which the next writer (or start-up) rewrites from
the journal. Readers never lock: they compare the journal's size and the files' identities with what
they last saw (a few ``stat`` calls) and apply new journal lines to their cache, so another worker's
write costs them only the lines it added, not a re-parse of the file.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from filelock import FileLock, Timeout

from storage import journal
from storage.base import Change, Describe, Record, Snapshot, Store, Table, Txn
from storage.errors import CorruptFileError, JournalTruncatedError, LockTimeoutError
from storage.journal import FileStat, stat_of

T = TypeVar("T")
log = logging.getLogger("library_api.storage")

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "library.lock"
CHANGES_KEPT = 4096  # record changes kept in memory for callers that maintain their own indexes


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


class JsonStore(Store):
    """The collections of one data directory, kept as JSON files.

    :param directory: the data directory; created when missing.
    :param collections: the names of the collections (each is ``<name>.json``).
    :param describe: turns a transaction's changes into public events (see :data:`Describe`).
    :param initial: called with a :class:`Txn` once, when the directory is new, to fill it.
    :param lock_timeout: seconds to wait for the lock before :class:`LockTimeoutError`.
    :param journal_keep: how many changes the journal keeps (at least); older ones are dropped.
    :raises CorruptFileError: when a collection file or the journal cannot be read.
    :raises LockTimeoutError: when the lock could not be taken in time.
    """

    def __init__(
        self,
        directory: Path | str,
        collections: Sequence[str],
        *,
        describe: Describe | None = None,
        initial: Callable[[Txn], Any] | None = None,
        lock_timeout: float = 10.0,
        journal_keep: int = 10_000,
    ) -> None:
        self.directory = Path(directory)
        self.collections = tuple(collections)
        self.journal_path = self.directory / JOURNAL_NAME
        self._paths = {name: self.directory / f"{name}.json" for name in self.collections}
        self._describe = describe
        self._journal_keep = max(1, journal_keep)
        self._lock_timeout = lock_timeout
        self._mutex = threading.RLock()  # one thread of this process at a time past this point
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self.failed_commits = 0  # callers that keep state in step with commits compare this
        self.directory.mkdir(parents=True, exist_ok=True)
        self._filelock = FileLock(self.directory / LOCK_NAME, thread_local=False)
        self._snap = Snapshot(0, {})
        self._broken: dict[str, tuple[FileStat | None, CorruptFileError]] = {}
        with self._mutex, self._locked():
            self._open_locked(initial)

    @contextmanager
    def exclusive(self) -> Iterator[Snapshot]:
        """Hold the data directory's lock, caught up with every commit: while it is held no process
        can commit, so the files on disk are one committed state (the snapshot yielded).

        :raises LockTimeoutError: when the lock could not be taken in time.
        """
        with self._mutex, self._locked():
            self._sync(locked=True)
            yield self._snap

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if self._fresh():
            return self._snap
        with self._mutex:
            try:
                if not self._sync(locked=False):
                    with self._locked():
                        self._sync(locked=True)
            except CorruptFileError as exc:
                # Readers keep the last good state; writers refuse (see update) until it is fixed.
                log.error("%s", exc)
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
        with self._mutex:
            # Read seq and events together: another thread may take in more while we look.
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
        with self._mutex:
            if since < self._changes_floor:
                return None
            seqs = self._change_seqs
            lo = bisect.bisect_right(seqs, since)
            hi = bisect.bisect_right(seqs, until)
            if until > self._snap.seq:
                return None
            return list(zip(seqs[lo:hi], self._change_list[lo:hi], strict=True))

    # -- writing -------------------------------------------------------------------------------

    def update(self, updater: Callable[[Txn], T]) -> T:
        """See :meth:`Store.update`. Concurrent calls in one process are committed together: the
        thread that gets the lock runs every updater waiting at that moment, each in its own child
        transaction (so one that raises loses only its own changes), and writes them all with one
        file rewrite and one journal fsync. Updaters must not call :meth:`update` themselves."""
        pending = _Pending(updater)
        with self._queue_lock:
            self._queue.append(pending)
        batch: list[_Pending] = []
        with self._mutex:
            if not pending.taken:
                batch, renamed = self._commit_queue()
        if batch:
            try:
                if renamed:
                    # The renames must be durable before anyone is told "done", but the lock is
                    # not needed for that: the journal already holds the commit.
                    journal.fsync_dir(self.directory)
            except OSError as exc:
                for item in batch:
                    item.error = item.error or exc
            finally:
                for item in batch:
                    item.done.set()
        pending.done.wait()
        return cast(T, pending.outcome())

    def _commit_queue(self) -> tuple[list[_Pending], bool]:
        """Run and commit every waiting updater. Returns them, and whether files were renamed."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        for item in batch:
            item.taken = True
        changes: list[Change] = []
        try:
            with self._locked():
                self._sync(locked=True)
                base = Txn(self._snap)
                for item in batch:
                    child = base.child()
                    try:
                        item.value = item.updater(child)
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
            return batch, False
        return batch, bool(changes)

    # -- internals: locking ----------------------------------------------------------------------

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

    # -- internals: opening and recovery -------------------------------------------------------

    def _reset_memory(self, floor: int) -> None:
        self._floor = floor
        self._event_seqs: list[int] = []
        self._event_bytes: list[bytes] = []
        self._change_seqs: list[int] = []
        self._change_list: list[Change] = []
        self._changes_floor = floor
        self._journal_changes = 0

    def _open_locked(self, initial: Callable[[Txn], Any] | None = None) -> None:
        """Build every bit of state from disk, repairing what a crash left. Lock held."""
        self._broken.clear()
        self._expected: dict[str, FileStat | None] = {}
        self._previous: dict[str, FileStat | None] = {}
        existing = {name: stat_of(path) for name, path in self._paths.items()}
        data = self.journal_path.read_bytes() if self.journal_path.exists() else b""
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        if parsed.consumed < len(data):
            log.warning("%s: cutting off an interrupted write at its end", self.journal_path)
            os.truncate(self.journal_path, parsed.consumed)
        fresh = parsed.floor is None and not any(existing.values())
        floor = parsed.floor or 0
        seq = max([floor, *(c.seq for c in parsed.commits)])
        committed: dict[str, tuple[int, FileStat]] = {}
        for commit in parsed.commits:
            for name, st in commit.files.items():
                committed[name] = (commit.seq, st)
        tables: dict[str, Table] = {}
        rewrite: set[str] = set()
        edited = False
        for name, path in self._paths.items():
            table = self._parse_file(name) if existing[name] else Table(name, {}, 1, 0)
            known = committed.get(name)
            if known is not None and existing[name] != known[1]:
                if table.seq < known[0] and (existing[name] is None or table.seq >= floor):
                    # The last writer committed but died before its rename: redo from the journal.
                    lines = [ln for c in parsed.commits for ln in c.lines if ln.get("collection") == name]
                    table = _replay(table, [ln for ln in lines if ln["seq"] > table.seq])
                    rewrite.add(name)
                else:
                    edited = True
            elif known is None and existing[name] is not None and parsed.floor is not None:
                edited = True  # a file the journal never wrote appeared
            elif parsed.floor is None and existing[name] is not None:
                log.info("%s: no journal yet, starting one", path)
            tables[name] = table
            seq = max(seq, table.seq)
        if edited:
            # Files changed while no server watched: what changed is unknown, so the journal starts
            # again after a new seq and clients that were following it are told to reload.
            seq += 1
            log.warning("%s: data files were changed outside the server; the journal starts again", self.directory)
            parsed = journal.ParsedJournal(floor=seq)
            rewrite = set(self.collections)
            # Every file is as of the new seq: a version derived from table seqs must move on too.
            tables = {n: Table(n, t.records, t.next_id, seq, t.parts, t.positions) for n, t in tables.items()}
        if parsed.floor is None or edited:
            journal.write_atomically(self.journal_path, [journal.encode_header(seq)])
        for name in self.collections:
            stat = existing[name]
            if name in rewrite and (stat is not None or tables[name].records):
                stat = self._write_file(tables[name])
            self._expected[name] = self._previous[name] = stat
        if rewrite or parsed.floor is None or edited or not parsed.commits:
            files = {n: s for n, s in self._expected.items() if s is not None}
            journal.append(self.journal_path, journal.encode_commit(seq, _now(), files))
        self._remove_orphans()
        self._snap = Snapshot(seq, tables)
        self._reset_memory(parsed.floor if parsed.floor is not None else seq)
        for commit in parsed.commits:
            self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
        self._remember_changes(None, seq)
        data = self.journal_path.read_bytes()
        jst = os.stat(self.journal_path)
        self._jkey = (jst.st_ino, jst.st_size)
        self._joffset = len(data)
        self._jline = data.count(b"\n")
        if fresh and initial is not None:
            txn = Txn(self._snap)
            initial(txn)
            changes = txn.changes()
            if changes:
                self._commit(changes, {name: txn.next_id(name) for name in self.collections})
                journal.fsync_dir(self.directory)

    def _remove_orphans(self) -> None:
        for tmp in self.directory.glob(".*.tmp"):
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)

    def _parse_file(self, name: str) -> Table:
        path = self._paths[name]
        data = path.read_bytes()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptFileError(path, exc.lineno, exc.colno, f"not valid JSON ({exc.msg})") from None
        seq, next_id = 0, 1
        if isinstance(doc, dict) and isinstance(doc.get(name), list):
            items = doc[name]
            seq = doc["seq"] if type(doc.get("seq")) is int else 0
            next_id = doc["next_id"] if type(doc.get("next_id")) is int else 1
        elif isinstance(doc, list):
            items = doc
        else:
            raise CorruptFileError(path, 1, 1, f'expected a list of records or an object with a "{name}" list')
        records: dict[int, Record] = {}
        for index, item in enumerate(items):
            rid = item.get("id") if isinstance(item, dict) else None
            problem = None
            if type(rid) is not int or rid < 1:
                problem = f"record {index + 1} has no positive integer id"
            elif rid in records:
                problem = f"id {rid} is used by two records"
            if problem:
                lines = item_lines(data.decode("utf-8", "replace"), name if isinstance(doc, dict) else None)
                raise CorruptFileError(path, lines[index] if index < len(lines) else None, None, problem)
            records[rid] = item
        if any(a > b for a, b in zip(records, list(records)[1:], strict=False)):
            records = dict(sorted(records.items()))
        if records:
            next_id = max(next_id, max(records) + 1)
        return Table(name, records, next_id, seq)

    # -- internals: following other processes --------------------------------------------------

    def _fresh(self) -> bool:
        """Whether nothing changed on disk since this process last looked (stat calls only)."""
        try:
            st = os.stat(self.journal_path)
        except FileNotFoundError:
            return False
        if (st.st_ino, st.st_size) != self._jkey:
            return False
        for name, path in self._paths.items():
            now = stat_of(path)
            if now != self._expected[name] and now != self._previous[name]:
                broken = self._broken.get(name)
                if broken is None or broken[0] != now:
                    return False
        return True

    def _sync(self, locked: bool) -> bool:
        """Catch up with the disk. Returns False when that needs the lock and ``locked`` is False."""
        # Open first and stat what was opened: the path may be replaced (compaction) at any moment.
        with open(self.journal_path, "rb") as fh:
            st = os.fstat(fh.fileno())
            replaced = st.st_ino != self._jkey[0] or st.st_size < self._joffset
            if replaced:
                whole = fh.read()
            elif st.st_size > self._joffset:
                fh.seek(self._joffset)
                data = fh.read(st.st_size - self._joffset)
        if replaced:
            # The journal was compacted or started again by another process.
            if not self._follow_new_journal(locked, whole, st):
                return False
        elif st.st_size > self._joffset:
            parsed = journal.parse(data, self.journal_path, self._jline + 1, at_start=False)
            for commit in parsed.commits:
                self._apply_commit(commit)
            self._joffset += parsed.consumed
            self._jline += parsed.lines
            if parsed.consumed < len(data):
                if locked:
                    log.warning("%s: cutting off an interrupted write at its end", self.journal_path)
                    os.truncate(self.journal_path, self._joffset)
                self._jkey = (st.st_ino, -1)  # look again next time: the write may still complete
            else:
                self._jkey = (st.st_ino, st.st_size)
        for name, path in self._paths.items():
            now = stat_of(path)
            if now == self._expected[name]:
                self._broken.pop(name, None)
                continue
            if not locked:
                broken = self._broken.get(name)
                if now == self._previous[name] or (broken is not None and broken[0] == now):
                    continue
                return False
            self._take_in(name, now)
        return True

    def _follow_new_journal(self, locked: bool, data: bytes, jstat: os.stat_result) -> bool:
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        floor = parsed.floor or 0
        if floor > self._snap.seq:
            if not locked:
                return False
            self._open_locked()
            return True
        self._reset_memory(floor)
        for commit in parsed.commits:
            if commit.seq > self._snap.seq:
                self._apply_commit(commit)
                continue
            for name, st in commit.files.items():
                if name in self._expected:
                    self._previous[name], self._expected[name] = self._expected[name], st
            self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
            self._remember_changes(None, commit.seq)
        self._joffset = parsed.consumed
        self._jline = parsed.lines
        self._jkey = (jstat.st_ino, jstat.st_size if parsed.consumed == len(data) else -1)
        return True

    def _apply_commit(self, commit: journal.Commit) -> None:
        """Take in a transaction committed by another process."""
        old = self._snap
        new_tables = dict(old.tables)
        changes: list[tuple[int, Change]] = []
        grouped: dict[str, list[dict[str, Any]]] = {}
        for line in commit.lines:
            if line.get("collection") in new_tables:
                grouped.setdefault(line["collection"], []).append(line)
        for name, lines in grouped.items():
            table = old.tables[name]
            for line in lines:
                changes.append(
                    (line["seq"], Change(name, line["id"], table.records.get(line["id"]), line.get("record")))
                )
            new_tables[name] = _replay(table, lines)
        for name, st in commit.files.items():
            if name in self._expected:
                self._previous[name], self._expected[name] = self._expected[name], st
        self._snap = Snapshot(max(old.seq, commit.seq), new_tables)
        self._remember_events([(ln["seq"], ln.get("event")) for ln in commit.lines])
        self._remember_changes(changes, commit.seq)

    def _remember_events(self, events: list[tuple[int, dict[str, Any] | None]]) -> None:
        """Keep public events for the feed, encoded once, and count the journal's changes."""
        for seq, event in events:
            if event is not None:
                self._event_seqs.append(seq)
                self._event_bytes.append(orjson.dumps({"seq": seq, **event}))
        self._journal_changes += len(events)

    def _remember_changes(self, changes: list[tuple[int, Change]] | None, upto: int) -> None:
        """Keep record changes for :meth:`changes_between`; None means they are not known."""
        if changes is None:
            self._changes_floor = max(self._changes_floor, upto)
            self._change_seqs.clear()
            self._change_list.clear()
            return
        for seq, change in changes:
            self._change_seqs.append(seq)
            self._change_list.append(change)
        if len(self._change_seqs) > 2 * CHANGES_KEPT:
            cut = len(self._change_seqs) - CHANGES_KEPT
            self._changes_floor = self._change_seqs[cut - 1]
            del self._change_seqs[:cut], self._change_list[:cut]

    def _take_in(self, name: str, now: FileStat | None) -> None:
        """A collection file is not what the journal says was written. Lock held."""
        current = self._snap.tables[name]
        if now == self._previous[name]:
            # A writer committed and then died before its rename: write what it committed.
            stat = self._write_file(current)
            self._previous[name], self._expected[name] = self._expected[name], stat
            journal.append(self.journal_path, journal.encode_commit(self._snap.seq, _now(), {name: stat}))
            self._after_own_append()
            return
        try:
            edited = self._parse_file(name) if now is not None else Table(name, {}, current.next_id, 0)
        except CorruptFileError as exc:
            self._broken[name] = (now, exc)
            raise
        self._broken.pop(name, None)
        changes = []
        for rid, record in edited.records.items():
            before = current.records.get(rid)
            if before != record:
                changes.append(Change(name, rid, before, record))
        for rid, record in current.records.items():
            if rid not in edited.records:
                changes.append(Change(name, rid, record, None))
        log.warning("%s was edited by hand: %d record(s) changed", self._paths[name], len(changes))
        next_ids = {n: t.next_id for n, t in self._snap.tables.items()}
        next_ids[name] = max(current.next_id, edited.next_id)
        self._commit(changes, next_ids, force={name})
        journal.fsync_dir(self.directory)

    # -- internals: committing -----------------------------------------------------------------

    def _commit(self, changes: list[Change], next_ids: dict[str, int], force: set[str] | None = None) -> None:
        """Make ``changes`` durable and current. Lock held."""
        old = self._snap
        touched = {c.collection for c in changes} | (force or set())
        seq = old.seq
        numbered: list[tuple[int, Change]] = []
        by_name: dict[str, list[tuple[int, Change]]] = {name: [] for name in touched}
        for change in changes:
            seq += 1
            numbered.append((seq, change))
            by_name[change.collection].append((seq, change))
        seq = max(seq, old.seq + 1) if force else seq
        new_tables = dict(old.tables)
        for name in touched:
            table = old.tables[name]
            entries = [(change.id, change.after) for _, change in by_name[name]]
            table_seq = by_name[name][-1][0] if by_name[name] else seq
            new_tables[name] = derive(table, entries, table_seq, next_ids.get(name, 1))
        new_snap = Snapshot(seq, new_tables)
        events = self._describe(changes, new_snap) if self._describe else [None] * len(changes)
        temps: dict[str, tuple[Path, FileStat]] = {}
        try:
            for name in touched:
                temps[name] = self._write_temp(new_tables[name])
            lines = [
                journal.encode_change(s, c.collection, c.id, c.after, e)
                for (s, c), e in zip(numbered, events, strict=True)
            ]
            lines.append(journal.encode_commit(seq, _now(), {name: st for name, (_, st) in temps.items()}))
            payload = b"".join(lines)
            jstat = journal.append(self.journal_path, payload)
        except BaseException:
            for tmp, _ in temps.values():
                tmp.unlink(missing_ok=True)
            raise
        # Committed. From here a crash is repaired from the journal.
        for name, (tmp, st) in temps.items():
            os.replace(tmp, self._paths[name])
            self._previous[name], self._expected[name] = self._expected[name], st
        # The directory is fsync'd by update() once the lock is released (see there).
        self._snap = new_snap
        self._joffset = jstat[1]
        self._jkey = (jstat[0], jstat[1])
        self._jline += len(lines)
        self._remember_events([(s, e) for (s, _), e in zip(numbered, events, strict=True)])
        self._remember_changes(numbered, seq)
        if self._journal_changes > 2 * self._journal_keep:
            try:
                self._compact()
            except OSError:  # the commit stands; compaction is tried again after the next one
                log.exception("%s: could not compact the journal", self.journal_path)

    def _after_own_append(self) -> None:
        st = os.stat(self.journal_path)
        self._jline += 1
        self._joffset = st.st_size
        self._jkey = (st.st_ino, st.st_size)

    def _write_temp(self, table: Table) -> tuple[Path, FileStat]:
        path = self._paths[table.name]
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
        return tmp, (st.st_ino, st.st_size, st.st_mtime_ns)

    def _write_file(self, table: Table) -> FileStat:
        return journal.write_atomically(self._paths[table.name], _encode_table(table))

    def _compact(self) -> None:
        """Drop the oldest changes from the journal, keeping at least ``journal_keep``. Lock held."""
        data = self.journal_path.read_bytes()
        parsed = journal.parse(data, self.journal_path, 1, at_start=True)
        kept: list[journal.Commit] = []
        count = 0
        for commit in reversed(parsed.commits):
            if count >= self._journal_keep:
                break
            kept.append(commit)
            count += len(commit.lines)
        kept.reverse()
        dropped = parsed.commits[: len(parsed.commits) - len(kept)]
        floor = dropped[-1].seq if dropped else (parsed.floor or 0)
        chunks = [journal.encode_header(floor)]
        for commit in kept:
            chunks.extend(orjson.dumps(line) + b"\n" for line in commit.lines)
            chunks.append(journal.encode_commit(commit.seq, _now(), commit.files))
        files = {n: s for n, s in self._expected.items() if s is not None}
        chunks.append(journal.encode_commit(self._snap.seq, _now(), files))
        jstat = journal.write_atomically(self.journal_path, chunks)
        self._floor = floor
        cut = bisect.bisect_right(self._event_seqs, floor)
        del self._event_seqs[:cut], self._event_bytes[:cut]
        self._journal_changes = count
        self._joffset = jstat[1]
        self._jkey = (jstat[0], jstat[1])
        self._jline = sum(len(c.lines) + 1 for c in kept) + 2


def _replay(table: Table, lines: list[dict[str, Any]]) -> Table:
    """``table`` with journal change lines applied."""
    if not lines:
        return table
    entries = [(line["id"], None if line.get("op") == "delete" else line["record"]) for line in lines]
    return derive(table, entries, max(table.seq, max(line["seq"] for line in lines)), table.next_id)


def derive(table: Table, entries: list[tuple[int, Record | None]], seq: int, next_id: int) -> Table:
    """A new table: ``table`` with each ``(id, record or None to delete)`` applied.

    The encoded parts are carried over when ``table`` has them: an update or an insert at the
    end touches only its own part; anything else reorders them, still without re-encoding the
    records that did not change.
    """
    records = dict(table.records)
    last_id = next(reversed(records)) if records else 0
    in_place = True
    for rid, record in entries:
        if record is None:
            if records.pop(rid, None) is not None:
                in_place = False
        else:
            if rid not in records:
                in_place = in_place and rid > last_id
                last_id = max(last_id, rid)
            records[rid] = record
    if not in_place and any(a > b for a, b in zip(records, list(records)[1:], strict=False)):
        records = dict(sorted(records.items()))
    parts, positions = table.parts, table.positions
    if parts is not None and positions is not None:
        changed = {rid for rid, _ in entries}
        if in_place:
            parts = parts.copy()
            new_ids = [rid for rid, _ in entries if rid in records and rid not in positions]
            if new_ids:
                positions = {**positions, **{rid: len(parts) + i for i, rid in enumerate(new_ids)}}
                parts.extend(b"" for _ in new_ids)
            for rid in changed:
                if rid in records:
                    parts[positions[rid]] = orjson.dumps(records[rid])
        else:
            old_parts, old_positions = parts, positions
            parts = [
                orjson.dumps(rec) if rid in changed or rid not in old_positions else old_parts[old_positions[rid]]
                for rid, rec in records.items()
            ]
            positions = {rid: i for i, rid in enumerate(records)}
    next_id = max(next_id, table.next_id, (last_id + 1) if records else 1)
    return Table(table.name, records, next_id, seq, parts, positions)


def _encode_table(table: Table) -> Iterator[bytes]:
    """The collection file: a small header, then one record per line, in id order."""
    if table.parts is None or table.positions is None:
        table.parts = [orjson.dumps(record) for record in table.records.values()]
        table.positions = {rid: i for i, rid in enumerate(table.records)}
    name = json.dumps(table.name)
    yield f'{{"seq": {table.seq}, "next_id": {table.next_id}, {name}: ['.encode()
    if table.parts:
        yield b"\n"
        yield b",\n".join(table.parts)
    yield b"\n]}\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
