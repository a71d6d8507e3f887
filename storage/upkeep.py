"""What the JSON store does besides committing: opening a directory (and replaying what its files
lack), taking in a person's edits, writing checkpoints, compacting the journal, and repairing a
journal damaged under a running server. A part of :class:`storage.jsonfile.JsonStore`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import orjson

from storage import journal
from storage.base import Change, Record, Records, Snapshot, Table, Txn
from storage.errors import CorruptFileError, JournalLostError, StoreUnavailableError
from storage.files import (
    JOURNAL_NAME,
    Checkpoint,
    _encode_table,
    _known,
    _now,
    _read_all,
    _read_from,
    _same,
    _stamp,
    item_lines,
)
from storage.journal import FileStat, stat_of

log = logging.getLogger("library_api.storage")
LOST_JOURNAL_WAIT = 10.0
"""Seconds a store opening a directory whose journal is gone waits for a running worker to repair it."""


class Upkeep:
    """The store's opening, checkpoints, hand edits, compaction and repairs (state lives on the store)."""

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
        if problem == "deleted":
            self._read_to_end()  # the file is gone from the folder but still open here
        head = self._read_head()
        waited = time.monotonic() - self._health.problem_since
        if head > self._snap.seq and waited < 10:
            raise StoreUnavailableError(
                f"{self.journal_path.name} was {problem} under the running server; the worker that holds change "
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
                state.problem, state.error, state.seen = "missing", None, None
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
        tmp, st = journal.write_temp(self._paths[name], _encode_table(table))
        return tmp, (*st, table.seq)

    def _append_checkpoint_line(self, line: bytes) -> None:
        self._append_locked(line, 1)

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

    def _open_locked(self, initial: Callable[[Txn], Any] | None = None) -> None:
        """Build every bit of state from disk, repairing what a crash left. Lock held."""
        deadline = time.monotonic() + LOST_JOURNAL_WAIT
        while True:
            try:
                with self._state:
                    self._open_state(initial is not None)
                break
            except JournalLostError as exc:
                if time.monotonic() > deadline:
                    log.error("%s; none came forward, so the journal starts again from the files", exc)
                    self._accept_lost_journal = True
                    continue
                self._filelock.release()  # let the worker that holds the changes repair the journal
                time.sleep(0.25)
                self._filelock.acquire(timeout=self._lock_timeout, poll_interval=0.001)
        self._accept_lost_journal = False
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
        self._fresh_directory = (
            parsed.floor is None and restart_reason is None and not any(existing.values()) and not self._read_head()
        )
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
        head = self._read_head()
        if parsed.floor is None and not self._fresh_directory and head > seq and not self._accept_lost_journal:
            # The journal is gone but the hint says changes were committed past what the files
            # hold: a running worker may hold them and be about to write them out. Starting a new
            # journal from the files now would lose them.
            raise JournalLostError(
                f"{self.journal_path.name} is missing, and changes up to {head} were committed after what the "
                f"collection files hold ({seq}); waiting for the worker that holds them to write them out"
            )
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
