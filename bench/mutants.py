"""A sampled mutation run over ``storage/``: do the store's tests catch a change of its behaviour?

Each mutation site is one small change of the source: a flipped comparison (``<``/``<=``,
``>``/``>=``, ``==``/``!=``), a negated ``if``/``while`` condition, an integer constant plus or
minus one, ``and``/``or`` swapped, a statement-level call replaced by ``pass``, or ``return x``
turned into ``return None``. A seeded random sample of the sites is drawn; each mutant is applied
on its own to a copy of the project in a temporary directory (the working tree is never touched)
and the store's tests are run against it. A mutant the tests fail on is *killed*; one that makes
them hang past ``--timeout`` counts as killed too (and is marked so). A survivor is either listed
in :data:`EQUIVALENT` (it changes no behaviour; the reason is given) or a gap in the tests.

Calls to the logger (``log.warning(...)`` and the like) are not mutation sites: deleting one changes
what is logged, not what the store does.

Run from the project's root with its virtualenv::

    .venv/bin/python bench/mutants.py --seed 1 --count 60
    .venv/bin/python bench/mutants.py --seed 1 --count 60 --slow     # also tests/test_files.py
    .venv/bin/python bench/mutants.py --list                          # every site, not run
    .venv/bin/python bench/mutants.py --id jsonfile.py:412:5:cmp      # one mutant (ids as printed)

Another package and its tests (the sites of the files named, the tests given)::

    .venv/bin/python bench/mutants.py --package library --files members.py,schemas.py \
        --tests tests/test_accounts.py,tests/test_members.py --seed 1 --count 40
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "storage"
TESTS = ["tests/test_storage.py", "tests/test_catalogue_index.py"]
SLOW_TESTS = ["tests/test_files.py"]
SKIP_COPY = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "results", "data"}

# Survivors that change no behaviour, keyed by (file, a piece of the original source line, the
# mutation) so that the list survives edits that move lines. The reason says why no user of the
# store can tell the mutant from the original.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("jsonfile.py", "if next_id > table.next_id:", "> -> >="): (
        "when they are equal the table is rebuilt with the same records, next_id and seq"
    ),
    ("jsonfile.py", "self._worker.join(timeout=5)", "5 -> 4"): (
        "the thread ends within one interval of the stop event; the timeout only bounds a hung round"
    ),
    ("jsonfile.py", "self._worker.join(timeout=5)", "5 -> 6"): (
        "the thread ends within one interval of the stop event; the timeout only bounds a hung round"
    ),
    ("jsonfile.py", "if parsed.consumed < len(data) and locked:", "< -> <="): (
        "when every byte was consumed the journal is cut to the size it already has: no change but a log line"
    ),
    ("jsonfile.py", 'if state.problem != "invalid" or state.seen != now:', "negate if"): (
        "the condition only decides whether the same invalid file is logged again"
    ),
    ("jsonfile.py", "if self._jfd >= 0:", ">= -> >"): (
        "the journal's descriptor is never 0 (stdin stays open), so > 0 and >= 0 agree"
    ),
    ("jsonfile.py", 'if pos >= len(text) or text[pos] == "]":', ">= -> >"): (
        "item_lines only reads text orjson parsed, whose array closes with ] before the text ends"
    ),
    (
        "jsonfile.py",
        "self._adopt_journal(fd, data, journal.parse(data, self.journal_path, 1, at_start=True))",
        "1 -> 2",
    ): (
        "first_line only numbers the lines of parse's error message (the count of lines read does not depend "
        "on it), and these bytes were written by this very call a moment before: they parse"
    ),
    (
        "jsonfile.py",
        "self._adopt_journal(fd, data, journal.parse(data, self.journal_path, 1, at_start=True))",
        "1 -> 0",
    ): (
        "first_line only numbers the lines of parse's error message (the count of lines read does not depend "
        "on it), and these bytes were written by this very call a moment before: they parse"
    ),
    ("jsonfile.py", "parsed = journal.parse(data, self.journal_path, 1, at_start=True)", "1 -> 2"): (
        "first_line only numbers the lines in parse's error message. Where this line stands, the message "
        "is never shown: the bytes were parsed before or just written under the lock (only an in-place "
        "overwrite of the journal's middle could fail here, and then just the line number would differ), "
        "or the error is caught and replaced (another process's journal, the damaged journal moved aside)"
    ),
    ("jsonfile.py", "parsed = journal.parse(data, self.journal_path, 1, at_start=True)", "1 -> 0"): (
        "first_line only numbers the lines in parse's error message. Where this line stands, the message "
        "is never shown: the bytes were parsed before or just written under the lock (only an in-place "
        "overwrite of the journal's middle could fail here, and then just the line number would differ), "
        "or the error is caught and replaced (another process's journal, the damaged journal moved aside)"
    ),
    ("jsonfile.py", "if commit.seq > self._snap.seq and commit.lines:", "> -> >="): (
        "the one commit >= adds is the last one this process already applied: applying it again gives the "
        "same records and seq, and the dirty marks it sets are reset by the compacted journal's closing "
        "commit, which names every checkpointed file (only the idle timer restarts)"
    ),
    ("jsonfile.py", "self._snap = Snapshot(0, {})", "0 -> 1"): (
        "a placeholder: _open_locked replaces it, from the files and the journal, before the constructor returns"
    ),
    ("jsonfile.py", "self._snap = Snapshot(0, {})", "0 -> -1"): (
        "a placeholder: _open_locked replaces it, from the files and the journal, before the constructor returns"
    ),
    ("upkeep.py", "idle = time.monotonic() - self._last_write >= self._checkpoint_idle", ">= -> >"): (
        "differs only when the time since the last write equals checkpoint_idle to the nanosecond"
    ),
    ("upkeep.py", "self._snap.seq + 1,", "1 -> 2"): "an argument of a log message (the first lost change)",
    ("upkeep.py", "self._snap.seq + 1,", "1 -> 0"): "an argument of a log message (the first lost change)",
    ("journal.py", "fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)", "384 -> 383"): (
        "the mode only applies to a file O_CREAT makes, and journal.append is only called on a journal that exists"
    ),
    ("journal.py", "fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)", "384 -> 385"): (
        "the mode only applies to a file O_CREAT makes, and journal.append is only called on a journal that exists"
    ),
    ("base.py", "copied.add(n)", "call -> pass"): (
        "each entry then copies its bucket again, a copy of the copy already changed: the same records "
        "(the original bucket is still never touched); emptied buckets are kept, which no method shows"
    ),
    ("upkeep.py", 'if problem == "deleted" and self._jfd >= 0:', "0 -> 1"): (
        "descriptor 0 is standard input: the journal's descriptor is never 0"
    ),
    ("upkeep.py", 'if problem == "deleted" and self._jfd >= 0:', "and -> or"): (
        "for a truncated or overwritten journal, reading on from the descriptor finds nothing new"
    ),
    ("jsonfile.py", "if self._jfd >= 0:", "0 -> 1"): "descriptor 0 is standard input: the journal's is never 0",
    ("upkeep.py", 'next_id = doc["next_id"] if type(doc.get("next_id")) is int else 1', "1 -> 0"): (
        "next_id is then raised to at least the last id + 1, which is 1 or more"
    ),
    ("upkeep.py", 'if state.problem != "invalid" or state.seen != now:', "!= -> =="): (
        "it only decides whether the same invalid file is logged again"
    ),
    ("upkeep.py", "parsed = journal.parse(data, self.journal_path, self._jline + 1, at_start=False)", "1 -> 2"): (
        "a line number for an error message that this (suppressed) read never shows"
    ),
    ("upkeep.py", "state.expected = known[-1] if known and len(known[-1]) == 4 else None", "1 -> 0"): (
        "every checkpoint record of this format has 4 fields: the length test gives the same answer for the first"
    ),
    (
        "upkeep.py",
        "state.dirty_since = None if table is None or checkpoint[3] >= table.seq else checkpoint[3] + 1",
        "1 -> 2",
    ): ("compaction is also bounded by the seq of the file actually on disk, which keeps the line this would let go"),
    ("jsonfile.py", "os.ftruncate(self._jfd, start)", "call -> pass"): (
        "a torn tail left by a failed write is cut by the next writer that holds the lock, before it appends"
    ),
    ("upkeep.py", "self._append_locked(line, 1)", "1 -> 0"): "it only counts lines for an error message's line number",
    ("upkeep.py", 'kept = [line for line in commit.lines if line["seq"] > floor]', "> -> >="): (
        "the line at the floor is kept in the file but is never answered (events are those after the floor)"
    ),
    ("upkeep.py", "state.dirty_since = state.expected[3] + 1", "1 -> 2"): (
        "compaction is also bounded by the seq of the file actually on disk, which keeps the line this would let go"
    ),
    (
        "files.py",
        "chunk = os.pread(fd, 1 << 20, offset)",
        "20 -> 19",
    ): "a read's chunk size: the same bytes in more reads",
    ("upkeep.py", "if state.problem:", "negate if"): "it only decides whether a file's recovery is logged",
    ("jsonfile.py", "CHANGES_KEPT = 4096", "4096 -> 4095"): (
        "how many record changes stay in memory: a caller asking past them rebuilds, with the same answer"
    ),
    ("upkeep.py", "journal.fsync_dir(self.directory)", "call -> pass"): (
        "makes the renames durable across a power cut, which no test on a running kernel can observe"
    ),
    ("files.py", "start = match.end() - 1 if match else -1", "1 -> 0"): (
        "the scan then starts one character later, on the white space before the first record: the same lines"
    ),
}


@dataclass(frozen=True)
class Mutant:
    file: str  # the file name inside storage/
    line: int
    col: int
    kind: str  # cmp, if, while, int+1, int-1, boolop, call, return
    label: str  # what the mutation does, e.g. "<= -> <"
    start: tuple[int, int]  # (line, byte column) of the replaced source, end exclusive
    end: tuple[int, int]
    replacement: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.col}:{self.kind}"


FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def _is_log_call(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in {"log", "logging"}


def _skipped_regions(tree: ast.AST) -> set[int]:
    """Ids of nodes not to mutate: everything inside f-strings (their positions are unreliable
    before Python 3.12) and inside annotations (never evaluated here)."""
    skipped: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            mark(node)
        elif isinstance(node, ast.AnnAssign | ast.arg):
            mark(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
    return skipped


def sites(file: Path) -> list[Mutant]:
    """Every mutation site of one source file, in source order."""
    source = file.read_text()
    tree = ast.parse(source)
    skipped = _skipped_regions(tree)
    found: list[Mutant] = []

    def add(node: ast.AST, kind: str, label: str, replacement: str, whole: ast.AST | None = None) -> None:
        target = whole or node
        found.append(
            Mutant(
                file.name,
                node.lineno,
                node.col_offset,
                kind,
                label,
                (target.lineno, target.col_offset),
                (target.end_lineno, target.end_col_offset),
                replacement,
            )
        )

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                flipped = FLIPS.get(type(op))
                if flipped is None:
                    continue
                ops = list(node.ops)
                ops[i] = flipped()
                new = ast.Compare(node.left, ops, node.comparators)
                label = f"{SYMBOL[type(op)]} -> {SYMBOL[flipped]}"
                found.append(
                    Mutant(
                        file.name,
                        node.lineno,
                        node.col_offset + i,  # one site per operator of a chain
                        "cmp",
                        label,
                        (node.lineno, node.col_offset),
                        (node.end_lineno, node.end_col_offset),
                        f"({ast.unparse(new)})",
                    )
                )
        elif isinstance(node, ast.If | ast.While):
            kind = "if" if isinstance(node, ast.If) else "while"
            test = node.test
            add(test, kind, f"negate {kind}", f"({ast.unparse(ast.UnaryOp(ast.Not(), test))})")
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            add(node, "int+1", f"{node.value} -> {node.value + 1}", f"({node.value + 1})")
            add(node, "int-1", f"{node.value} -> {node.value - 1}", f"({node.value - 1})")
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            label = "and -> or" if isinstance(node.op, ast.And) else "or -> and"
            add(node, "boolop", label, f"({ast.unparse(ast.BoolOp(other, node.values))})")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _is_log_call(node.value):
            add(node, "call", "call -> pass", "pass")
        elif isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Constant) and value.value is None:
                continue
            add(value, "return", "return x -> return None", "(None)")
    found.sort(key=lambda m: (m.line, m.col, m.kind))
    return found


def all_sites(files: set[str] | None = None) -> list[Mutant]:
    result = []
    for file in sorted((ROOT / PACKAGE).glob("*.py")):
        if files is None or file.name in files:
            result.extend(sites(file))
    return result


def apply(source: bytes, mutant: Mutant) -> bytes:
    """The source with the mutant's span replaced (ast columns are byte offsets in the line)."""
    lines = source.splitlines(keepends=True)
    (sl, sc), (el, ec) = mutant.start, mutant.end
    head = b"".join(lines[: sl - 1]) + lines[sl - 1][:sc]
    tail = lines[el - 1][ec:] + b"".join(lines[el:])
    return head + mutant.replacement.encode() + tail


def original_line(mutant: Mutant) -> str:
    return (ROOT / PACKAGE / mutant.file).read_text().splitlines()[mutant.line - 1].strip()


def mutated_line(mutant: Mutant) -> str:
    source = (ROOT / PACKAGE / mutant.file).read_bytes()
    return apply(source, mutant).decode().splitlines()[mutant.start[0] - 1].strip()


def equivalent_reason(mutant: Mutant) -> str | None:
    text = original_line(mutant)
    for (file, snippet, label), reason in EQUIVALENT.items():
        if file == mutant.file and label == mutant.label and snippet in text:
            return reason
    return None


def copy_project(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=lambda _dir, names: [n for n in names if n in SKIP_COPY or n.endswith(".pyc")])


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """'passed', 'failed' or 'timeout', and the seconds the run took."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the tests fork: end the whole group
        proc.wait()
        return "timeout", time.monotonic() - started
    return ("passed" if code == 0 else "failed"), time.monotonic() - started


def main() -> int:
    global PACKAGE, TESTS  # noqa: PLW0603 - the script's one target, set once from the command line
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the sample's random seed (default 1)")
    parser.add_argument("--count", type=int, default=60, help="how many mutants to draw (default 60)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a mutant counts as hung")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="mutants run at once")
    parser.add_argument("--slow", action="store_true", help="also run tests/test_files.py")
    parser.add_argument("--list", action="store_true", help="print every site and exit")
    parser.add_argument("--id", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument("--package", default=PACKAGE, help=f"the folder whose files are mutated (default {PACKAGE})")
    parser.add_argument("--files", default="", help="only these files of it, comma-separated (default: all)")
    parser.add_argument("--tests", default="", help="the test files to run, comma-separated (default: the store's)")
    args = parser.parse_args()
    PACKAGE = args.package
    if args.tests:
        TESTS = args.tests.split(",")

    population = all_sites(set(args.files.split(",")) if args.files else None)
    if args.list:
        for m in population:
            print(f"{m.id}  {m.label}  | {original_line(m)}")
        print(f"{len(population)} sites")
        return 0
    if args.id:
        by_id = {m.id: m for m in population}
        missing = [i for i in args.id if i not in by_id]
        if missing:
            parser.error(f"no such mutant: {', '.join(missing)}")
        sample = [by_id[i] for i in args.id]
    else:
        sample = random.Random(args.seed).sample(population, min(args.count, len(population)))
    tests = TESTS + (SLOW_TESTS if args.slow else [])

    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        workers = [Path(tmp) / f"w{i}" for i in range(max(1, args.jobs))]
        for w in workers:
            copy_project(w)
        baseline, seconds = run_tests(workers[0], tests, args.timeout)
        if baseline != "passed":
            print(f"the tests do not pass on the unmutated code ({baseline}); nothing to measure")
            return 2
        print(f"{len(population)} sites; {len(sample)} drawn (seed {args.seed}); baseline run {seconds:.1f} s")
        free = list(workers)
        originals = {f.name: f.read_bytes() for f in (ROOT / PACKAGE).glob("*.py")}

        stopping = threading.Event()

        def run(mutant: Mutant) -> tuple[Mutant, str, float]:
            if stopping.is_set():
                return mutant, "not run", 0.0
            workdir = free.pop()
            target = workdir / PACKAGE / mutant.file
            try:
                mutated = apply(originals[mutant.file], mutant)
                compile(mutated, str(target), "exec")
                target.write_bytes(mutated)
                outcome, took = run_tests(workdir, tests, args.timeout)
            finally:
                target.write_bytes(originals[mutant.file])
                free.append(workdir)
            return mutant, outcome, took

        pool = ThreadPoolExecutor(len(workers))
        try:
            results = list(pool.map(run, sample))
        except KeyboardInterrupt:
            stopping.set()  # no new mutant starts; those running end with their test runs
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    killed = timeouts = 0
    survivors, equivalents, wrongly_listed = [], [], []
    for mutant, outcome, took in results:
        reason = equivalent_reason(mutant)
        if outcome == "passed":
            (equivalents if reason else survivors).append((mutant, reason))
            mark = "EQUIVALENT" if reason else "SURVIVED"
        else:
            killed += 1
            timeouts += outcome == "timeout"
            mark = "killed (hung)" if outcome == "timeout" else "killed"
            if reason:
                wrongly_listed.append(mutant)
        print(f"{mark:14} {took:5.1f} s  {mutant.id}  {mutant.label}")

    if equivalents:
        print("\nequivalent by inspection (not counted):")
        for mutant, reason in equivalents:
            print(
                f"  {PACKAGE}/{mutant.file}:{mutant.line}  {mutant.label}\n    {original_line(mutant)}\n    -> {reason}"
            )
    if survivors:
        print("\nsurvivors:")
        for mutant, _ in survivors:
            print(f"  {PACKAGE}/{mutant.file}:{mutant.line}  {mutant.label}  [{mutant.id}]")
            print(f"    - {original_line(mutant)}")
            print(f"    + {mutated_line(mutant)}")
    if wrongly_listed:
        print("\nlisted as equivalent but killed (the EQUIVALENT entry is wrong or too broad):")
        for mutant in wrongly_listed:
            print(f"  {mutant.id}  {mutant.label}  | {original_line(mutant)}")
    counted = len(results) - len(equivalents)
    percent = 100.0 * killed / counted if counted else 100.0
    print(
        f"\nkilled {killed} of {counted} ({percent:.1f}%)"
        f"; {timeouts} of them by hanging; {len(equivalents)} equivalent excluded; seed {args.seed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
