#!/usr/bin/env python3
"""Micro-benchmark of the catalogue's read side (catalogue.py), in-process, without HTTP.

For each size it builds a synthetic catalogue (bench/run.py's books, plus a loan history: a fifth as
many returned loans as books and one open loan per hundred books), opens it with the app exactly as a
worker does, and reports:

- the first sorted read of a fresh process (everything built from the files),
- ``q`` search latency for several queries (median of repeated requests on an unchanged catalogue),
- the first read after a loan or a return (page 1, sorted by title, and a search),
- the first read after a book change (a new title),
- page 50 sorted by title,
- the process's resident memory after a sorted read, a filtered read and a search.

Each size runs in its own process, so its memory figure is its own.

    python bench/catalogue.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# This file is named like the module it measures: import from the project, not from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(ROOT))

QUERIES = (
    "shadow",  # a common title word
    "dark river",  # two words
    "zimmermann",  # an author's name
    "ight",  # inside words (night, light, midnight...)
    "o'connor",  # punctuation
    "978-0-12",  # an ISBN prefix, typed with hyphens
    "5551",  # digits anywhere in an ISBN
    "xyzzy",  # nothing
)
REPEAT = 15


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def build_data(directory: Path, size: int) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", BENCH_DIR / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = run
    spec.loader.exec_module(run)
    books = run.generate_books(size)
    run.write_collection(directory / "books.json", books)
    members = [
        {
            "id": i, "email": f"m{i}@example.org", "first_name": "M", "last_name": str(i), "role": "member",
            "password_hash": None, "token_version": 0, "created_at": run.CREATED_AT, "updated_at": run.CREATED_AT,
        }
        for i in range(1, 1001)
    ]  # fmt: skip
    members[0]["role"] = "admin"
    run.write_collection(directory / "members.json", members)
    loans = []
    for i in range(size // 5):
        book_id = 1 + (i * 7919) % size
        loans.append({
            "id": i + 1, "book_id": book_id, "member_id": 2 + i % 999, "borrowed_at": "2025-01-01T00:00:00Z",
            "due_at": "2025-01-15T00:00:00Z", "days": 14, "renewals": 0, "returned_at": "2025-01-10T00:00:00Z",
            "fine": 0.0,
        })  # fmt: skip
    for j in range(size // 100):
        book_id = size - j
        loans.append({
            "id": len(loans) + 1, "book_id": book_id, "member_id": 2 + j % 999, "borrowed_at": "2026-01-01T00:00:00Z",
            "due_at": "2026-01-15T00:00:00Z", "days": 14, "renewals": 0, "returned_at": None, "fine": None,
        })  # fmt: skip
    run.write_collection(directory / "loans.json", loans)


def measure(size: int) -> dict[str, Any]:
    from library import books, catalogue, circulation
    from library.catalogue import BookQuery
    from library.readmodel import CatalogueView
    from library_api import create_app

    tmp = tempfile.TemporaryDirectory(prefix="catalogue-bench-")
    directory = Path(tmp.name)
    build_data(directory, size)
    app = create_app({"TESTING": True, "DATA_DIR": str(directory), "SEED_FILE": "", "SECRET_KEY": "x" * 40})
    store = app.extensions["library_store"]
    takes_store = "store" in inspect.signature(CatalogueView.of).parameters

    def view() -> CatalogueView:
        snap = store.snapshot()
        return CatalogueView.of(snap, store) if takes_store else CatalogueView.of(snap)

    def read(**query: Any) -> bytes:
        return catalogue.list_books(view(), BookQuery(**query))

    result: dict[str, Any] = {"size": size, "rss_start_mb": round(rss_mb(), 1)}
    result["first_read_by_title_ms"] = round(timed(lambda: read(sort_by="title")), 2)
    result["first_filter_ms"] = round(timed(lambda: read(genre="Fantasy", sort_by="-publication_year")), 2)
    result["first_search_ms"] = round(timed(lambda: read(q="shadow")), 2)
    result["first_isbn_search_ms"] = round(timed(lambda: read(q="978-0-12")), 2)
    read(sort_by="-title")
    read(sort_by="author")
    read(status="checked_out")
    gc.collect()
    result["rss_after_reads_mb"] = round(rss_mb(), 1)

    searches = {}
    for q in QUERIES:
        read(q=q)
        runs = [timed(lambda q=q: read(q=q)) for _ in range(REPEAT)]
        body = json.loads(read(q=q))
        searches[q] = {"ms": round(statistics.median(runs), 3), "matches": body["total"]}
    result["q_search"] = searches
    result["page_50_by_title_ms"] = round(
        statistics.median(timed(lambda: read(page=50, sort_by="title")) for _ in range(REPEAT)), 3
    )
    result["page_1_ms"] = round(statistics.median(timed(lambda: read()) for _ in range(REPEAT)), 3)

    # The first read after a loan or a return, then after a book change: each change committed
    # through the store (not timed), then one read of each kind (timed, each on the new snapshot).
    rules = circulation.Rules()
    admin = store.snapshot().get("members", 1)
    now = datetime(2026, 1, 2, tzinfo=UTC)  # before any open loan is due: no fines

    def after_change(change: Any, n: int) -> dict[str, float]:
        kinds: dict[str, list[float]] = {"page 1 by title": [], "search": [], "genre": [], "get by id": []}
        for i in range(n):
            change(i)
            kinds["page 1 by title"].append(timed(lambda: read(sort_by="title")))
            change(i + 0.5)
            kinds["search"].append(timed(lambda: read(q="shadow river")))
            change(i + 0.25)
            kinds["genre"].append(timed(lambda: read(genre="Fantasy")))
            change(i + 0.75)
            kinds["get by id"].append(timed(lambda i=i: view().encoded(1 + i)))
        return {k: round(statistics.median(v), 3) for k, v in kinds.items()}

    def loan_change(i: float) -> None:
        book_id = 1 + int(i * 4) * 31 % (size // 2)
        member_id = 2 + int(i * 4) % 900

        def borrow_or_return(txn: Any) -> Any:
            if circulation.open_loan_of(txn, book_id) is None:
                return circulation.borrow(txn, admin, book_id, member_id, 14, None, now, rules)
            return circulation.give_back(txn, admin, book_id, now + timedelta(days=1), rules)

        store.update(borrow_or_return)

    def book_change(i: float) -> None:
        book_id = 1 + int(i * 4) * 37 % size

        def retitle(txn: Any) -> Any:
            book = txn.get("books", book_id)
            return txn.put("books", {**book, "title": f"Renamed {i} {book['title']}", "updated_at": books.utcnow()})

        store.update(retitle)

    result["after_loan_ms"] = after_change(loan_change, 10)
    result["after_book_change_ms"] = after_change(book_change, 10)
    read(sort_by="title")
    read(genre="Fantasy")
    read(q="shadow")
    gc.collect()
    # Most of this growth is the store's own (each commit copies its tables), not the catalogue's.
    result["rss_end_after_commits_mb"] = round(rss_mb(), 1)
    store.close()
    tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="catalogue sizes, comma-separated")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one size
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size)], check=True, capture_output=True, text=True, env=os.environ
        )
        print(json.dumps(json.loads(out.stdout.strip().splitlines()[-1]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
