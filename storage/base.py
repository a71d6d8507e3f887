"""The storage interface: collections of JSON records with integer ids, changed in transactions.

A *store* holds a fixed set of named collections. Readers take a :class:`Snapshot`, an immutable,
consistent view of every collection at one journal sequence number (``seq``). Writers call
:meth:`Store.update` with a function that receives a :class:`Txn`; whatever that function changes is
committed atomically (all of it or none of it), durably, and under the store's lock, so the check a
writer makes and the write that follows it cannot be separated by another writer.

Every committed change gets a sequence number that only grows, and may carry a public *event* (what
the live feed publishes). :meth:`Store.events_since` replays those events.
"""

from __future__ import annotations

import abc
import bisect
import contextvars
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from storage.errors import NotFoundError

Record = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change:
    """One record changed by a transaction: ``after`` is None for a delete, ``before`` for a create."""

    collection: str
    id: int
    before: Record | None
    after: Record | None


SHIFT = 9
"""Records are kept in buckets of 2**SHIFT consecutive ids: a change copies only its bucket."""
BUCKETS_SHIFT = 9
"""Buckets are kept in groups of 2**BUCKETS_SHIFT consecutive buckets: a change copies its group's
table of buckets too, and the table of groups (four at a million ids), never every bucket's."""
GROUP_SHIFT = SHIFT + BUCKETS_SHIFT


class Records(Mapping[int, Record]):
    """The records of one collection at one moment, by id, iterated in ascending id order.

    Immutable and cheap to derive: the records are kept in buckets of 512 consecutive ids, and the
    buckets in groups of 512 consecutive buckets; :meth:`with_changes` copies only the buckets
    that a change touches, their groups and the small table of groups, so a write to a collection
    of a million records costs its change, not a copy of every record nor of every bucket.
    """

    __slots__ = ("_groups", "_order", "_len")

    def __init__(self, groups: dict[int, dict[int, dict[int, Record]]] | None = None, length: int = 0) -> None:
        self._groups = groups or {}
        self._order = sorted(n for group in self._groups.values() for n in group)
        self._len = length

    @classmethod
    def from_items(cls, items: Iterable[tuple[int, Record]]) -> Records:
        """Records from ``(id, record)`` pairs in any order (a later pair with the same id wins)."""
        return cls().with_changes(items)

    def __getitem__(self, record_id: int) -> Record:
        try:
            return self._groups[record_id >> GROUP_SHIFT][record_id >> SHIFT][record_id]
        except (KeyError, TypeError):
            raise KeyError(record_id) from None

    def get(self, record_id: Any, default: Any = None) -> Any:
        try:
            return self._groups[record_id >> GROUP_SHIFT][record_id >> SHIFT].get(record_id, default)
        except (KeyError, TypeError):
            return default

    def __contains__(self, record_id: object) -> bool:
        try:
            return record_id in self._groups[record_id >> GROUP_SHIFT][record_id >> SHIFT]  # type: ignore[operator]
        except (KeyError, TypeError):
            return False

    def _buckets_in_order(self) -> Iterator[dict[int, Record]]:
        groups = self._groups
        return (groups[n >> BUCKETS_SHIFT][n] for n in self._order)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self._buckets_in_order())

    def __reversed__(self) -> Iterator[int]:
        groups = self._groups
        return itertools.chain.from_iterable(reversed(groups[n >> BUCKETS_SHIFT][n]) for n in reversed(self._order))

    def __len__(self) -> int:
        return self._len

    def values(self) -> Iterator[Record]:  # type: ignore[override]
        return itertools.chain.from_iterable(bucket.values() for bucket in self._buckets_in_order())

    def items(self) -> Iterator[tuple[int, Record]]:  # type: ignore[override]
        return itertools.chain.from_iterable(bucket.items() for bucket in self._buckets_in_order())

    def last_id(self) -> int:
        """The highest id held, or 0."""
        for n in reversed(self._order):
            bucket = self._groups[n >> BUCKETS_SHIFT][n]
            if bucket:
                return next(reversed(bucket))
        return 0

    def with_changes(self, entries: Iterable[tuple[int, Record | None]]) -> Records:
        """New records: these with each ``(id, record)`` put, or removed where record is None."""
        old_groups = self._groups
        groups = dict(old_groups)
        copied_groups: set[int] = set()
        copied: dict[int, dict[int, Record]] = {}  # bucket number: its copy
        unordered: set[int] = set()
        length = self._len
        for record_id, record in entries:
            n = record_id >> SHIFT
            bucket = copied.get(n)
            if bucket is None:
                g = n >> BUCKETS_SHIFT
                if g not in copied_groups:
                    groups[g] = dict(groups.get(g, ()))
                    copied_groups.add(g)
                bucket = groups[g][n] = dict(groups[g].get(n, ()))
                copied[n] = bucket
            if record is None:
                if bucket.pop(record_id, None) is not None:
                    length -= 1
            else:
                if record_id not in bucket:
                    length += 1
                    if bucket and record_id < next(reversed(bucket)):
                        unordered.add(n)
                bucket[record_id] = record
        added: list[int] = []
        removed: list[int] = []
        for n, bucket in copied.items():
            g = n >> BUCKETS_SHIFT
            if n in unordered:
                groups[g][n] = dict(sorted(bucket.items()))
            if not bucket:
                del groups[g][n]
            held = n in old_groups.get(g, ())
            if bucket and not held:
                added.append(n)
            elif held and not bucket:
                removed.append(n)
        for g in copied_groups:
            if not groups[g]:
                del groups[g]
        derived = Records.__new__(Records)
        derived._groups, derived._len = groups, length
        if not (added or removed):
            derived._order = self._order
        elif len(added) + len(removed) <= 16:  # a bucket begun or emptied: not a sort of them all
            order = self._order.copy()
            for n in removed:
                del order[bisect.bisect_left(order, n)]
            for n in added:
                bisect.insort(order, n)
            derived._order = order
        else:
            derived._order = sorted(n for group in groups.values() for n in group)
        return derived


_EMPTY = Records()


class Table:
    """One collection at one moment: its records, the next id to hand out, and the ``seq`` of the
    last change to it. Tables are never changed after they are published."""

    __slots__ = ("name", "records", "next_id", "seq")

    def __init__(self, name: str, records: Records, next_id: int, seq: int) -> None:
        self.name = name
        self.records = records
        self.next_id = next_id
        self.seq = seq

    def with_changes(self, entries: list[tuple[int, Record | None]], seq: int, next_id: int = 1) -> Table:
        """This table with each ``(id, record or None to delete)`` applied, as of ``seq``."""
        records = self.records.with_changes(entries)
        # An id that was ever given out (even one deleted since) is never given out again.
        last = max((rid for rid, _ in entries), default=0)
        return Table(self.name, records, max(next_id, self.next_id, last + 1), max(seq, self.seq))


class Snapshot:
    """A consistent, read-only view of every collection at sequence number ``seq``.

    The records handed out must be treated as read-only: they are shared with every other reader.
    Values computed from a snapshot are kept with it by :meth:`memo`.
    """

    __slots__ = ("seq", "tables", "derived", "__weakref__")

    def __init__(self, seq: int, tables: Mapping[str, Table]) -> None:
        self.seq = seq
        self.tables = tables
        self.derived: dict[Any, Any] = {}

    def records(self, collection: str) -> Records:
        """All records of ``collection`` by id, in ascending id order (read-only). Two snapshots
        share the very same object for a collection that did not change between them."""
        table = self.tables.get(collection)
        return table.records if table is not None else _EMPTY

    def collection_seq(self, collection: str) -> int:
        """The ``seq`` of the last change to ``collection`` (0 when it never changed)."""
        table = self.tables.get(collection)
        return table.seq if table is not None else 0

    def memo(self, key: Any, build: Callable[[], T]) -> T:
        """The value kept with this snapshot under ``key``, built by ``build()`` on first use (a
        value computed from the snapshot, such as an index: it is never stale)."""
        try:
            return self.derived[key]
        except KeyError:
            return self.derived.setdefault(key, build())

    def get(self, collection: str, record_id: int) -> Record | None:
        """The record with ``record_id``, or None."""
        return self.tables[collection].records.get(record_id)

    def count(self, collection: str) -> int:
        """How many records ``collection`` holds."""
        return len(self.tables[collection].records)


class Txn:
    """The working view handed to an updater: reads see the transaction's own changes.

    A transaction may be a *child* of another: it sees its parent's changes, and :meth:`merge`
    adds its own to the parent's, so that one updater's changes can be thrown away while those
    of the updaters before it in the same commit are kept.

    Records passed to :meth:`put` and :meth:`insert` are stored as given; do not change them later.
    """

    def __init__(self, snapshot: Snapshot, parent: Txn | None = None) -> None:
        self.snapshot = snapshot
        self.parent = parent
        self._changes: dict[tuple[str, int], Record | None] = {}
        self._next_ids: dict[str, int] = {}

    def child(self) -> Txn:
        """A transaction on top of this one."""
        return Txn(self.snapshot, self)

    def merge(self, child: Txn) -> None:
        """Take over what ``child`` changed."""
        self._changes.update(child._changes)
        self._next_ids.update(child._next_ids)

    def get(self, collection: str, record_id: int) -> Record | None:
        """The current record with ``record_id`` (including this transaction's changes), or None."""
        key = (collection, record_id)
        txn: Txn | None = self
        while txn is not None:
            if key in txn._changes:
                return txn._changes[key]
            txn = txn.parent
        return self.snapshot.get(collection, record_id)

    def get_or_fail(self, collection: str, record_id: int, message: str) -> Record:
        """Like :meth:`get`.

        :raises NotFoundError: with ``message`` when there is no such record.
        """
        record = self.get(collection, record_id)
        if record is None:
            raise NotFoundError(message)
        return record

    def items(self, collection: str) -> Iterator[tuple[int, Record]]:
        """Every current record of ``collection`` with its id: the snapshot's, then new ones."""
        changed = {rid: rec for (col, rid), rec in self._all_changes().items() if col == collection}
        for rid, rec in self.snapshot.tables[collection].records.items():
            if rid in changed:
                rec = changed.pop(rid)
                if rec is None:
                    continue
            yield rid, rec
        for rid, rec in changed.items():
            if rec is not None:
                yield rid, rec

    def pending(self, collection: str) -> dict[int, Record | None]:
        """What this transaction (with its parents) changed in ``collection`` so far, by id
        (None for a deleted record)."""
        return {rid: rec for (col, rid), rec in self._all_changes().items() if col == collection}

    def where(self, collection: str, field: str, value: Any) -> list[Record]:
        """The current records of ``collection`` whose ``field`` equals ``value``, in id order.

        Found through an index of the snapshot (built on first use, kept in ``derived``, so once
        per snapshot) and this transaction's own changes: a check does not walk every record.
        """
        snap = self.snapshot
        key = ("where", collection, field)
        index = snap.derived.get(key)
        if index is None:
            index = {}
            for rid, record in snap.tables[collection].records.items():
                index.setdefault(record.get(field), []).append(rid)
            snap.derived[key] = index
        pending = self.pending(collection)
        records = snap.tables[collection].records
        found = {rid: records[rid] for rid in index.get(value, ()) if rid not in pending}
        for rid, record in pending.items():
            if record is not None and record.get(field) == value:
                found[rid] = record
        return [found[rid] for rid in sorted(found)]

    def insert(self, collection: str, record: Record) -> Record:
        """Store ``record`` under a new id (never used before in this collection) and return it."""
        new_id = self.next_id(collection)
        self._next_ids[collection] = new_id + 1
        stored = {"id": new_id, **{k: v for k, v in record.items() if k != "id"}}
        self._changes[(collection, new_id)] = stored
        return stored

    def put(self, collection: str, record: Record) -> Record:
        """Store ``record`` (which carries its existing ``id``), replacing the record with that id.

        :raises NotFoundError: when there is no record with that id.
        """
        record_id = record["id"]
        if self.get(collection, record_id) is None:
            raise NotFoundError(f"No record {record_id} in {collection}")
        self._changes[(collection, record_id)] = record
        return record

    def delete(self, collection: str, record_id: int) -> Record:
        """Remove the record with ``record_id`` and return what it was.

        :raises NotFoundError: when there is no such record.
        """
        record = self.get_or_fail(collection, record_id, f"No record {record_id} in {collection}")
        self._changes[(collection, record_id)] = None
        return record

    def next_id(self, collection: str) -> int:
        """The id the next :meth:`insert` into ``collection`` would get."""
        txn: Txn | None = self
        while txn is not None:
            if collection in txn._next_ids:
                return txn._next_ids[collection]
            txn = txn.parent
        return self.snapshot.tables[collection].next_id

    def changes(self) -> list[Change]:
        """What this transaction (with its parents) changes, one entry per record, in the order
        first touched; records put back as they were are not changes."""
        result = []
        for (collection, record_id), after in self._all_changes().items():
            before = self.snapshot.get(collection, record_id)
            if before is after or before == after:
                continue
            result.append(Change(collection, record_id, before, after))
        return result

    def _all_changes(self) -> dict[tuple[str, int], Record | None]:
        if self.parent is None:
            return self._changes
        return {**self.parent._all_changes(), **self._changes}


READS_SINCE: contextvars.ContextVar[float | None] = contextvars.ContextVar("library_reads_since", default=None)
"""The moment (``time.monotonic()``) from which the reads of this context must see every commit: a
web request sets its arrival, so every read it makes is at least as fresh as the request (what a
client that wrote elsewhere just before expects), and a store that has to ask a server whether
anything changed (PostgreSQL) asks once for all the reads of the request, and once for every
request that arrived while it asked. Unset: each read must be as fresh as its own call."""


@contextmanager
def reads_since(moment: float) -> Iterator[None]:
    """Within the block, :meth:`Store.snapshot` may answer with state checked at or after ``moment``."""
    token = READS_SINCE.set(moment)
    try:
        yield
    finally:
        READS_SINCE.reset(token)


Describe = Callable[[list[Change], Snapshot], list[dict[str, Any] | None]]
"""Turns a transaction's changes into the public events (or None) published for each of them,
given the snapshot after the transaction."""


class Store(abc.ABC):
    """A set of named collections kept durably, with a journal of every committed change."""

    directory: Path
    """The folder of the store's files (uploads, the signing key): its data, or a local copy of them."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The current state, re-validated against what other processes (or a person) wrote: it
        holds every commit acknowledged before the call (or before :data:`READS_SINCE`, when set).

        :raises CorruptFileError: when a data file changed into something that cannot be read and no
            earlier state of it is known to this process.
        """

    def held(self) -> Snapshot:
        """The latest state this process holds, without asking for commits of other processes
        that it has not taken in yet: for a caller that checks again in a transaction (under the
        lock), and asks :meth:`snapshot` when what it found there does not do. The JSON files
        read what other processes wrote locally and cheaply, so this is :meth:`snapshot` there."""
        return self.snapshot()

    @abc.abstractmethod
    def update(self, updater: Callable[[Txn], T]) -> T:
        """Run ``updater`` on a fresh view under the store's lock and commit what it changed.

        The commit is all-or-nothing and durable (fsync'd) before this returns. If ``updater``
        raises, nothing is written and the exception propagates.

        :param updater: receives a :class:`Txn`; its return value is returned.
        :raises LockTimeoutError: when the lock could not be taken in time.
        :raises CorruptFileError: when a data file cannot be read; nothing is written.
        """

    @abc.abstractmethod
    def events_since(self, since: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Public events with ``seq`` greater than ``since``, oldest first, at most ``limit``.

        :returns: the events and the ``seq`` to ask from next time.
        :raises JournalTruncatedError: when the journal no longer reaches back to ``since``.
        """

    @abc.abstractmethod
    def changes_between(self, since: int, until: int) -> list[tuple[int, Change]] | None:
        """The record changes with ``since < seq <= until`` known to this process, or None when
        they are not all known (the caller must then recompute from a snapshot)."""

    def raw_events_since(self, since: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """Like :meth:`events_since`, each event as its seq and its JSON bytes (encoded once,
        shared by every reader).

        :raises JournalTruncatedError: when the changes no longer reach back to ``since``.
        """
        events, last = self.events_since(since, limit)
        return [(event["seq"], orjson.dumps(event)) for event in events], last

    @property
    @abc.abstractmethod
    def waiting_writes(self) -> int:
        """How many updates of this process wait to be committed (the next group commit's size)."""

    @abc.abstractmethod
    def exclusive(self) -> AbstractContextManager[Snapshot]:
        """Hold off every other commit while the block runs, with the stored data complete as of
        the snapshot yielded (what a consistent backup copies). The thread in the block may itself
        :meth:`update`: its commit takes in the updates queued behind the block, which then still
        holds the others off.

        :raises LockTimeoutError: when that could not be had in time.
        :raises StoreUnavailableError: when part of the data cannot be read or written now.
        """

    def maintain(self, force: bool = False) -> None:  # noqa: B027 - nothing to do for some stores
        """One round of background work (checkpoints, repairs); ``force`` does what is pending
        now. Safe to call at any time from any thread."""

    def start(self) -> None:  # noqa: B027 - nothing to run for some stores
        """Run :meth:`maintain` in the background of this process (idempotent)."""

    def health(self) -> dict[str, Any]:
        """``{"writable": bool, "problems": [{"file": ..., "problem": ...}], "seq": int}``: what
        stands in the way of writes now."""
        return {"writable": True, "problems": [], "seq": self.snapshot().seq}

    def share_files(self) -> None:  # noqa: B027 - the files are already shared for some stores
        """Make the files written into the store's ``directory`` (uploads, the signing key) visible
        to every other process of the store now (a commit does it too)."""

    def remove_file(self, name: str) -> None:
        """Remove the file ``name`` (a path relative to the store's ``directory``) for every process
        of the store; a missing file is fine. A file is only ever removed this way: one missing from
        a process's folder (a cache emptied by hand) is not taken for a removal."""
        (Path(self.directory) / name).unlink(missing_ok=True)

    @contextmanager
    def sharing_files(self) -> Iterator[None]:
        """Make a file in ``directory`` that every process of the store must have the same of (the
        generated signing key): within the block, the files the others shared are in ``directory``
        and no other process is in such a block; at its end, what it wrote is shared."""
        yield
        self.share_files()

    def close(self) -> None:  # noqa: B027 - optional for stores that hold nothing open
        """Release what the store holds open (after writing what is pending)."""


class Pending:
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


CHANGES_KEPT = 4096
"""Record changes each process keeps in memory for callers that keep their own indexes."""


class GroupCommit(Store):
    """A store whose concurrent updates in one process are committed together: the thread that
    gets the commit mutex takes every updater waiting at that moment and hands them to
    :meth:`_commit_batch`, which runs each in its own child transaction (:meth:`_run_updaters`:
    one that raises loses only its own changes) and commits them at once."""

    def _start_queue(self) -> None:
        """The queue and its locks, fresh (at opening, and in a forked child)."""
        # Held by the thread that commits (and by an exclusive() block, which may commit itself).
        self._commit_mutex = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[Pending] = []

    @property
    def waiting_writes(self) -> int:
        """How many updates of this process wait to be committed (the next group commit's size)."""
        return len(self._queue)

    def update(self, updater: Callable[[Txn], T]) -> T:
        """See :meth:`Store.update`. Updaters must not call :meth:`update` themselves, and must
        take what they need as arguments: they may run on another thread."""
        pending = Pending(updater)
        with self._queue_lock:
            self._queue.append(pending)
        with self._commit_mutex:
            if not pending.taken:
                self._commit_queue()
        pending.done.wait()
        return cast(T, pending.outcome())

    def _commit_queue(self) -> None:
        """Commit every waiting updater, then wake their threads. Commit mutex held."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        for item in batch:
            item.taken = True
        try:
            self._commit_batch(batch)
        except BaseException as exc:  # nothing was committed: every updater in the batch fails
            for item in batch:
                if item.error is None:
                    item.error = exc
        finally:
            for item in batch:
                item.done.set()

    def _join_waiting(self, batch: list[Pending]) -> None:
        """Add to ``batch`` (in place) the updaters queued since it was taken: called once the
        store's lock is held, so that what arrived while the lock was awaited is committed with it
        rather than waiting for the next commit (its caller wakes every updater of ``batch``)."""
        with self._queue_lock:
            late, self._queue = self._queue, []
        for item in late:
            item.taken = True
        batch.extend(late)

    @staticmethod
    def _run_updaters(base: Txn, batch: list[Pending], check: Callable[[Txn], None] | None = None) -> None:
        """Run each updater of ``batch`` in a child of ``base``, merging those that succeed (and
        pass ``check``); a failure is kept as that updater's outcome."""
        for item in batch:
            child = base.child()
            try:
                # In a context of its own: an updater may run on another request's thread (or the
                # background one), so it gets its arguments and nothing ambient (a web framework's
                # request or app proxies fail loudly in it).
                item.value = contextvars.Context().run(item.updater, child)
                if check is not None:
                    check(child)
            except BaseException as exc:  # the updater's own failure: only it is refused
                item.error = exc
            else:
                base.merge(child)

    # -- the record changes kept in memory (for callers that keep their own indexes) --------------
    # A subclass sets ``_changes_floor``, ``_change_seqs`` and ``_change_list`` when it (re)loads,
    # and holds ``_state`` (its state mutex) and ``_snap`` (its snapshot).

    def _remember_changes(self, changes: list[tuple[int, Change]]) -> None:
        """Keep record changes for :meth:`changes_between` (the latest :data:`CHANGES_KEPT` at least)."""
        for seq, change in changes:
            self._change_seqs.append(seq)
            self._change_list.append(change)
        if len(self._change_seqs) > 2 * CHANGES_KEPT:
            cut = len(self._change_seqs) - CHANGES_KEPT
            self._changes_floor = self._change_seqs[cut - 1]
            del self._change_seqs[:cut], self._change_list[:cut]

    def changes_between(self, since: int, until: int) -> list[tuple[int, Change]] | None:
        with self._state:
            if since < self._changes_floor or until > self._snap.seq:
                return None
            seqs = self._change_seqs
            lo = bisect.bisect_right(seqs, since)
            hi = bisect.bisect_right(seqs, until)
            return list(zip(seqs[lo:hi], self._change_list[lo:hi], strict=True))

    @abc.abstractmethod
    def _commit_batch(self, batch: list[Pending]) -> None:
        """Run ``batch``'s updaters on the latest committed state (:meth:`_run_updaters`) and
        commit what they changed, durably; raise when nothing was committed. Once the store's lock
        is held, what queued meanwhile joins ``batch`` (:meth:`_join_waiting`)."""
