#!/usr/bin/env python3
"""Benchmark of library_api under gunicorn, driven by wrk, beside its ceiling and json-server.

For each catalogue size: generate (once, cached under bench/data/<N>/) a synthetic catalogue, measure
the peak memory of `flask load-books` importing it, start the server exactly as the Procfile does on
a fresh copy of it, and run every scenario with wrk a few times. Beside each read, the ceiling
(bench/ceiling.py: our captured answer as fixed bytes, served by gunicorn with the same
gunicorn.conf.py) and json-server 1.0 (on the same books) are measured in the same runs. Reports
the median req/s, p50 and p99 latency, the server's CPU time per request, the answers that were not
2xx, the workers' memory and the start-up time. Prints a markdown table per size and writes the
same as JSON to bench/results/<timestamp>.json.

    python bench/run.py --sizes 10000,100000
    python bench/run.py --sizes 10000 --duration 3s --runs 1 --no-json-server

Standard library only; needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``), and for json-server
Node.js's npm (json-server and the Node.js it needs are installed into bench/node_modules by
``npm ci --prefix bench`` on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, unquote, urlencode

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DATA_CACHE = BENCH_DIR / "data"
RESULTS_DIR = BENCH_DIR / "results"
GUNICORN = Path(sys.executable).parent / "gunicorn"
BENCH_EMAIL = "bench@example.org"  # the librarian (an admin, made by `flask create-admin`) who writes
TOKEN_VARIABLE = "BENCH_TOKEN"  # how wrk's write scripts get the bearer token (common.lua reads it)

WRK_THREADS = 2
WRK_CONNECTIONS = 8
# A request unanswered after this long counts as a timeout (a socket error); wrk then drops the
# connection and opens another. Writes on a large catalogue can be this slow: the run goes on.
WRK_TIMEOUT = "10s"
STARTUP_TIMEOUT = 120.0
SETTLE_TIMEOUT = 120.0
# After a run a server may still be working through requests that wrk stopped waiting for (slow
# writes, or json-server's sorts of 100k books, one at a time): wait for them (until its CPU is
# quiet) before the next run, up to this long, then go on with a warning.
DRAIN_TIMEOUT = 300.0
# A server that completes fewer requests than this in a run is measured in that one run only: more
# runs would add little but the drain of its backlog (seconds per request), and the time of a run.
SLOW_RUN_REQUESTS = 16
WARMUP = 2  # seconds of each write scenario, unmeasured, before its runs
STOP_TIMEOUT = 15.0
MAX_RUNS = 70  # create.lua gives each run its own block of ISBNs; it has room for 70
CREATED_AT = "2026-01-01T00:00:00Z"
DISTURBED = 0.10  # share of the CPUs taken by others (processes, the hypervisor) that makes a run suspect
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
JSON_SERVER_DIR = BENCH_DIR / "node_modules" / "json-server"  # npm install --prefix bench (package.json)
NODE_IN_BENCH = BENCH_DIR / "node_modules" / ".bin" / "node"  # the Node.js that json-server 1.0 needs (>= 22.12)
PAGE_SIZE = 10  # GET /books's default limit, and json-server's default _per_page

# -- the synthetic catalogue -------------------------------------------------------------------------

GENRES = (
    "Fiction", "Science Fiction", "Fantasy", "Mystery", "Thriller", "Romance", "Horror",
    "Historical Fiction", "Biography", "Memoir", "History", "Science", "Computing", "Mathematics",
    "Philosophy", "Psychology", "Poetry", "Drama", "Children", "Young Adult", "Travel", "Cooking",
    "Art", "Music", "Religion", "Politics", "Economics", "Business", "Health", "Nature",
)  # fmt: skip
FIRST_NAMES = (
    "Ada", "Alan", "Alice", "Amara", "Anna", "Arthur", "Beatrix", "Benjamin", "Carlos", "Chen",
    "Clara", "Daniel", "Dmitri", "Elena", "Elif", "Emily", "Farah", "George", "Grace", "Hana",
    "Henry", "Ingrid", "Isaac", "James", "Jane", "Jonas", "Kenji", "Laura", "Leo", "Lucia", "Maria",
    "Mark", "Miriam", "Nadia", "Nikolai", "Olga", "Omar", "Paul", "Priya", "Rachel", "Ravi", "Rosa",
    "Samuel", "Sofia", "Thomas", "Ursula", "Victor", "Wei", "Yusuf", "Zora",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Adeyemi", "Alvarez", "Andersen", "Bauer", "Becker", "Brennan", "Calloway", "Castro",
    "Chandra", "Delacroix", "Dubois", "Eriksen", "Fitzgerald", "Fontaine", "Garcia", "Gupta",
    "Hartmann", "Hayes", "Ibrahim", "Ivanova", "Jensen", "Kaminski", "Kowalski", "Larsen", "Lindgren",
    "Marchetti", "Moreau", "Nakamura", "Novak", "O'Connor", "Okafor", "Petrov", "Quinn", "Ramirez",
    "Rossi", "Sato", "Schmidt", "Silva", "Sokolov", "Tanaka", "Thornton", "Ueda", "Vasquez",
    "Weber", "Whitaker", "Xu", "Yamamoto", "Zhang", "Zimmermann",
)  # fmt: skip
PUBLISHERS = (
    "Penguin", "Vintage", "HarperCollins", "Macmillan", "Random House", "Simon & Schuster",
    "Hachette", "Faber & Faber", "Bloomsbury", "Scribner", "Knopf", "Tor Books", "Orbit",
    "Del Rey", "Ace Books", "Baen", "Oxford University Press", "Cambridge University Press",
    "MIT Press", "Princeton University Press", "O'Reilly Media", "Addison-Wesley", "No Starch Press",
    "Pragmatic Bookshelf", "Manning", "Springer", "Wiley", "Norton", "Picador", "Granta",
    "Canongate", "Scholastic", "Puffin", "Walker Books", "Chronicle Books", "Phaidon", "Taschen",
    "Ten Speed Press", "Lonely Planet", "Rough Guides", "Verso", "Zed Books", "Graywolf Press",
    "Coffee House Press", "New Directions", "Europa Editions", "Pushkin Press", "Fitzcarraldo",
    "Gollancz", "Angry Robot",
)  # fmt: skip
TITLE_WORDS = (
    "Shadow", "River", "Winter", "Garden", "Silent", "Empire", "Glass", "Harbor", "Night", "Letters",
    "Kingdom", "Forgotten", "Secret", "Light", "Stone", "Ocean", "Mountain", "Storm", "Crown",
    "Memory", "Iron", "Golden", "Broken", "Distant", "Hidden", "Last", "First", "Wild", "Quiet",
    "Burning", "Falling", "Rising", "Dark", "Bright", "Ancient", "Modern", "Northern", "Southern",
    "Eastern", "Western", "City", "Island", "Forest", "Desert", "Valley", "Bridge", "Tower", "House",
    "Road", "Journey", "Return", "Voyage", "Promise", "Dream", "Song", "Story", "Tale", "Legend",
    "Chronicle", "History", "Science", "Art", "Craft", "Theory", "Practice", "Guide", "Handbook",
    "Atlas", "Map", "Compass", "Clock", "Mirror", "Window", "Door", "Key", "Lantern", "Candle",
    "Fire", "Water", "Earth", "Wind", "Sky", "Star", "Moon", "Sun", "Dawn", "Dusk", "Midnight",
    "Summer", "Autumn", "Spring", "Rain", "Snow", "Frost", "Thunder", "Echo", "Whisper", "Silence",
    "Fortune", "Destiny", "Honor", "Courage", "Truth", "Lies", "Blood", "Bones", "Heart", "Soul",
    "Mind", "Machine", "Engine", "Code", "Signal", "Network", "Algorithm", "Data", "Pattern",
    "Number", "Meadow", "Orchard", "Kitchen", "Table", "Feast", "Bread", "Salt", "Wine", "Honey",
    "Wolf", "Raven", "Fox", "Lion", "Serpent", "Dragon", "Horse", "Sparrow", "Whale", "Tiger",
    "Queen", "King", "Prince", "Daughter", "Son", "Mother", "Father", "Sister", "Brother",
    "Stranger", "Traveler", "Soldier", "Sailor", "Doctor", "Teacher", "Thief", "Spy", "Witness",
    "Orphan", "Widow", "Painter", "Poet", "Keeper", "Hunter", "Dancer", "Found", "Endless",
)  # fmt: skip
AUTHOR_COUNT = 2000


def isbn13_check_digit(first12: str) -> str:
    """The check digit that completes a 12-digit ISBN-13 prefix."""
    total = sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(first12))
    return str((10 - total % 10) % 10)


def make_title(rng: random.Random) -> str:
    """A title of 2 to 6 words, some of them starting with "The"."""
    words = rng.sample(TITLE_WORDS, rng.randint(2, 6))
    if rng.random() < 0.3:
        words[0] = "The"
    return " ".join(words)


def generate_books(count: int) -> list[dict[str, Any]]:
    """``count`` synthetic books with ids 1..count, in the server's stored record form.

    ISBN-13s are unique, 978-0 or 978-1 (below the block that create.lua uses), with valid check
    digits. The same ``count`` always gives the same books.
    """
    rng = random.Random(count)
    all_names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    authors = rng.sample(all_names, AUTHOR_COUNT)
    bodies = rng.sample(range(200_000_000), count)
    books = []
    for book_id, body in enumerate(bodies, start=1):
        first12 = f"978{body:09d}"
        books.append({
            "id": book_id,
            "title": make_title(rng),
            "author": rng.choice(authors),
            "genre": rng.choice(GENRES),
            "publisher": rng.choice(PUBLISHERS),
            "publication_year": rng.randint(1900, 2025),
            "isbn": first12 + isbn13_check_digit(first12),
            "cover_url": None,
            "document_url": None,
            "created_at": CREATED_AT,
            "updated_at": CREATED_AT,
        })  # fmt: skip
    return books


def write_collection(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as the server writes a collection file (``books.json`` for
    ``books.json``): a header, then one compact record per line.

    Written to a temporary file first, so an interrupted run never leaves half a file in the cache.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f'{{"seq": 0, "next_id": {len(records) + 1}, "{path.stem}": [\n')
        fh.write(",\n".join(json.dumps(record, separators=(",", ":")) for record in records))
        fh.write("\n]}\n")
    os.replace(tmp, path)


def catalogue_file(count: int) -> Path:
    """The cached books.json for ``count`` books, generated on first use."""
    path = DATA_CACHE / str(count) / "books.json"
    if not path.exists():
        print(f"generating {count} books into {path.relative_to(ROOT)}", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_collection(path, generate_books(count))
    return path


@dataclass(frozen=True)
class Facts:
    """What the scenarios need to know of a catalogue: its size and values that occur in it."""

    size: int
    genre: str
    genre_matches: int
    author: str
    genre_author_matches: int
    word: str
    word_matches: int


def facts_of(path: Path) -> Facts:
    """Pick query values from the catalogue at ``path``: the most common genre + author pair (its
    genre alone for the genre filter), and the most common title word of five letters or more
    (counted as ``q`` matches: in the title, author or ISBN, case-insensitive)."""
    books = json.loads(path.read_text(encoding="utf-8"))["books"]
    pairs = Counter((book["genre"], book["author"]) for book in books)
    (genre, author), pair_count = pairs.most_common(1)[0]
    genre_count = sum(book["genre"] == genre for book in books)
    words = Counter(w.lower() for book in books for w in book["title"].split() if len(w) >= 5)
    word = words.most_common(1)[0][0]
    texts = (f"{b['title']}\x1f{b['author']}\x1f{b['isbn']}".lower() for b in books)
    return Facts(len(books), genre, genre_count, author, pair_count, word, sum(word in text for text in texts))


# -- scenarios ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One wrk workload: a Lua script in bench/ and the arguments it gets after the run number.

    Writing scenarios are signed in (a librarian's bearer token); the others send no token, as the
    server's read cache skips requests that carry Authorization.

    ``sample`` (reads only) is the request whose answer run.py captures once and has the ceiling
    serve. ``json_server`` is the same workload for json-server 1.0, as (script, its arguments), in
    json-server's query syntax; None when json-server has no equivalent.
    """

    name: str
    script: str
    args: Callable[[Facts], list[str]]
    writes: bool = False
    sample: Callable[[Facts], str] | None = None
    json_server: Callable[[Facts], tuple[str, list[str]]] | None = None


def books_path(**params: str) -> str:
    """``/books`` with ``params`` as its query string."""
    return "/books?" + urlencode(params, quote_via=quote) if params else "/books"


def js_page(**params: str) -> str:
    """A json-server 1.0 list request for one page of PAGE_SIZE (``_page``, ``_per_page``) with
    ``params``: without ``_page`` json-server answers every match, where our answer is one page."""
    return books_path(**params, _page="1", _per_page=str(PAGE_SIZE))


def js_search(word: str) -> dict[str, str]:
    """Our ``q`` (the word in the title, author or ISBN, case-insensitive) in json-server 1.0's
    ``_where`` (its ``contains`` is case-insensitive too)."""
    fields = [{field: {"contains": word}} for field in ("title", "author", "isbn")]
    return {"_where": json.dumps({"or": fields}, separators=(",", ":"))}


def js_cold(**params: str) -> tuple[str, list[str]]:
    """cold.lua for json-server: its page parameter is ``_page``."""
    return "cold.lua", [books_path(**params, _per_page=str(PAGE_SIZE)), "_page"]


SCENARIOS = (
    Scenario("list page 1", "fixed.lua", lambda f: [books_path()],
             sample=lambda f: books_path(),
             json_server=lambda f: ("fixed.lua", [js_page()])),
    Scenario("page 50 by title", "fixed.lua", lambda f: [books_path(page="50", sort_by="title")],
             sample=lambda f: books_path(page="50", sort_by="title"),
             json_server=lambda f: ("fixed.lua", [books_path(_page="50", _per_page=str(PAGE_SIZE), _sort="title")])),
    Scenario("by title cold", "cold.lua", lambda f: [books_path(sort_by="title")],
             sample=lambda f: books_path(sort_by="title", page="20"),
             json_server=lambda f: js_cold(_sort="title")),
    Scenario("genre", "fixed.lua", lambda f: [books_path(genre=f.genre)],
             sample=lambda f: books_path(genre=f.genre),
             json_server=lambda f: ("fixed.lua", [js_page(genre=f.genre)])),
    Scenario("genre+author", "fixed.lua", lambda f: [books_path(genre=f.genre, author=f.author)],
             sample=lambda f: books_path(genre=f.genre, author=f.author),
             json_server=lambda f: ("fixed.lua", [js_page(genre=f.genre, author=f.author)])),
    Scenario("genre+author cold", "cold.lua", lambda f: [books_path(genre=f.genre, author=f.author)],
             sample=lambda f: books_path(genre=f.genre, author=f.author, page="20"),
             json_server=lambda f: js_cold(genre=f.genre, author=f.author)),
    Scenario("q search", "fixed.lua", lambda f: [books_path(q=f.word)],
             sample=lambda f: books_path(q=f.word),
             json_server=lambda f: ("fixed.lua", [js_page(**js_search(f.word))])),
    Scenario("q search cold", "cold.lua", lambda f: [books_path(q=f.word)],
             sample=lambda f: books_path(q=f.word, page="20"),
             json_server=lambda f: js_cold(**js_search(f.word))),
    Scenario("get by id", "get_by_id.lua", lambda f: [str(f.size)],
             sample=lambda f: f"/books/{(f.size + 1) // 2}",
             json_server=lambda f: ("get_by_id.lua", [str(f.size)])),
    Scenario("create", "create.lua", lambda f: list(GENRES), writes=True,
             json_server=lambda f: ("create.lua", list(GENRES))),
    Scenario("update", "update.lua", lambda f: [str(f.size), *GENRES], writes=True,
             json_server=lambda f: ("update.lua", [str(f.size), *GENRES])),
)  # fmt: skip
"""Every scenario, reads first: the workers' memory is measured before the first write. The cold
variants' ceiling serves the answer for page 20 (of the 1..40 they cycle through)."""


# -- the server --------------------------------------------------------------------------------------


class ServerError(Exception):
    """The server did not start, or died while it was being measured."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(proc_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError):
                continue  # gone meanwhile
    return sorted(children)


def cpu_ticks(pid: int) -> int:
    """User + system CPU time used by ``pid``, in clock ticks (0 when it is gone)."""
    try:
        fields = proc_stat(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time since boot, summed over the CPUs: what processes used (user, nice and system time;
    the kernel's interrupt work, which no process is charged for, left out), and what the hypervisor
    stole from this virtual machine."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, steal = (int(fields[i]) for i in (1, 2, 3, 8))
    return (user + nice + system) / CLOCK_TICKS, steal / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU time of this script's finished child processes (wrk's runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


LOG_PROBLEM = re.compile(r"\bERROR\b|CRITICAL|WORKER TIMEOUT|^[\w.]+(Error|Exception)\b")
"""Lines of the server's log that tell of a problem: logged errors and the exception of a traceback."""


class Managed:
    """A server in a ``with`` block: started on entry, stopped and its temporary folder removed on
    exit (also when starting fails half-way)."""

    tmp: Path | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)


class Server(Managed):
    """gunicorn serving library_api as the Procfile starts it, on a temporary copy of a catalogue.

    ``extra_files`` maps file names to files copied into the data directory beside books.json
    before the server starts (circulation.py writes its members.json so).

    Use as a context manager: entering starts it, waits until it answers and every worker has
    loaded the catalogue, and signs in a librarian for the writes (:attr:`token`); leaving stops it
    (also on Ctrl-C or an exception) and deletes the copy and the server's log.
    """

    def __init__(self, catalogue: Path, workers: int | None, extra_files: Mapping[str, Path] | None = None) -> None:
        self.catalogue = catalogue
        self.extra_files = dict(extra_files or {})
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp: Path | None = None
        self.log_path = Path(os.devnull)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.token = ""
        self.health: dict[str, Any] = {}
        self.startup_s = 0.0
        self.ready_s = 0.0

    def start(self) -> None:
        """Start gunicorn and wait until it is healthy and its workers are idle."""
        self.tmp = Path(tempfile.mkdtemp(prefix="library-bench-"))
        self.log_path = self.tmp / "server.log"
        data_dir = self.tmp / "data"
        data_dir.mkdir()
        shutil.copyfile(self.catalogue, data_dir / "books.json")
        for name, path in self.extra_files.items():
            shutil.copyfile(path, data_dir / name)
        env = dict(os.environ)
        env.pop("GUNICORN_ACCESSLOG", None)
        env.update(PORT=str(self.port), HOST="127.0.0.1", LIBRARY_DATA_DIR=str(data_dir), LIBRARY_SEED_FILE="")
        # The server and `flask create-admin` (run with this environment too) sign with this key.
        env["LIBRARY_SECRET_KEY"] = secrets.token_urlsafe(36)
        if self.workers is not None:
            env["WEB_CONCURRENCY"] = str(self.workers)
        self.env = env
        self.launch([str(GUNICORN), "--config", "gunicorn.conf.py", "library_api:create_app()"])
        self.token = self.sign_in()
        self.wait_idle()  # the workers take in the new member and the sign-in before anything is measured

    def launch(self, command: list[str]) -> None:
        """Start ``command`` (gunicorn) in the project's folder with :attr:`env`, and wait until it
        answers ``GET /healthz`` and its workers are idle."""
        with open(self.log_path, "wb") as log:
            began = time.monotonic()
            # A session of its own: Ctrl-C reaches this script, which then stops the server itself.
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.health = self.wait_healthy()
        self.startup_s = time.monotonic() - began
        self.wait_idle()
        self.ready_s = time.monotonic() - began

    def sign_in(self) -> str:
        """Make a librarian as an operator does (``flask create-admin``, in the server's environment,
        on its data directory) and sign them in with ``POST /auth/login``; returns the bearer token."""
        password = secrets.token_urlsafe(24)
        command = [sys.executable, "-m", "flask", "--app", "library_api", "create-admin", BENCH_EMAIL,
                   "--password", password, "--name", "Bench Librarian"]  # fmt: skip
        try:
            made = subprocess.run(
                command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=STARTUP_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ServerError(f"flask create-admin took more than {STARTUP_TIMEOUT:g} s") from None
        if made.returncode != 0:
            raise ServerError(f"flask create-admin failed (exit {made.returncode}):\n{made.stdout}{made.stderr}")
        body = json.dumps({"email": BENCH_EMAIL, "password": password}).encode()
        login = urllib.request.Request(
            self.url + "/auth/login", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(login, timeout=30) as answer:
                return json.loads(answer.read())["access_token"]
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise ServerError(f"POST /auth/login answered {exc.code}: {detail}\n{self.log_tail()}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise ServerError(f"POST /auth/login failed: {exc!r}\n{self.log_tail()}") from None

    def authorization(self) -> dict[str, str]:
        """The header that signs a write in as the benchmark's librarian."""
        return {"Authorization": f"Bearer {self.token}"}

    def wait_healthy(self) -> dict[str, Any]:
        """Poll ``GET /healthz`` until it answers 200; returns its body."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return json.loads(answer.read())
            except (OSError, ValueError):
                pass  # not listening yet, not answering yet, or not 200 yet
            time.sleep(0.05)
        raise ServerError(f"/healthz did not answer 200 within {STARTUP_TIMEOUT:g} s\n{self.log_tail()}")

    def wait_idle(self) -> None:
        """Wait until every worker has loaded the catalogue.

        The first healthy answer only says that one worker has; the others load it after it (one at
        a time, under the data directory's lock), and a benchmark started before they are ready would
        measure fewer workers. Loading takes CPU, so the workers count as ready once none of them
        used any for half a second.
        """
        if not self.settle(SETTLE_TIMEOUT):
            raise ServerError(f"the workers were still busy {SETTLE_TIMEOUT:g} s after start-up\n{self.log_tail()}")

    def settle(self, timeout: float, quiet: float = 0.5) -> bool:
        """Wait until no worker used CPU for ``quiet`` seconds; False when they were still busy after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        previous: dict[int, int] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            sample = {pid: cpu_ticks(pid) for pid in self.worker_pids()}
            if sample and sample == previous:
                return True
            previous = sample
            time.sleep(quiet)
        return False

    def check_alive(self) -> None:
        """Raise :class:`ServerError` when the gunicorn master has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"gunicorn exited with code {self.proc.returncode}\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        return children_of(self.proc.pid) if self.proc is not None else []

    def cpu_seconds(self) -> float:
        """CPU time used so far by the gunicorn master and its workers, including workers that have
        exited and been reaped (the master's cutime and cstime), so that a replaced worker's time
        is not lost."""
        if self.proc is None:
            return 0.0
        try:
            fields = proc_stat(self.proc.pid)
        except OSError:
            return 0.0
        reaped = int(fields[13]) + int(fields[14])
        return (reaped + sum(cpu_ticks(pid) for pid in [self.proc.pid, *self.worker_pids()])) / CLOCK_TICKS

    def workers_rss_mb(self) -> float:
        """The workers' resident memory together, in MB (MiB)."""
        return sum(rss_kib(pid) for pid in self.worker_pids()) / 1024

    def each_worker_rss_mb(self) -> list[float]:
        """Each worker's resident memory, in MB (MiB), in the order of their process ids."""
        return [round(rss_kib(pid) / 1024, 1) for pid in self.worker_pids()]

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "--- server log (end) ---\n" + "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Lines of the server's log that tell of errors, crashes or worker timeouts."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if LOG_PROBLEM.search(line)]

    def stop(self) -> None:
        """Stop gunicorn: SIGTERM, then SIGKILL to its process group if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class CeilingServer(Server):
    """bench/ceiling.py, a bare WSGI app answering the bytes captured in ``answers`` (a folder, see
    :func:`capture_answers`), served by gunicorn with the same gunicorn.conf.py as library_api.

    A context manager like :class:`Server`; it signs nobody in (it has no writes).
    """

    def __init__(self, answers: Path, workers: int | None) -> None:
        super().__init__(Path(os.devnull), workers)
        self.answers = answers

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="library-bench-ceiling-"))
        self.log_path = self.tmp / "server.log"
        env = dict(os.environ)
        env.pop("GUNICORN_ACCESSLOG", None)
        env.update(PORT=str(self.port), HOST="127.0.0.1", BENCH_CEILING_DIR=str(self.answers))
        if self.workers is not None:
            env["WEB_CONCURRENCY"] = str(self.workers)
        self.env = env
        self.launch([str(GUNICORN), "--config", "gunicorn.conf.py", "--pythonpath", str(BENCH_DIR), "ceiling:app"])


def slug(name: str) -> str:
    """A scenario's name as a path segment: ``q search cold`` -> ``q-search-cold``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def capture_answers(server: Server, scenarios: list[Scenario], facts: Facts, folder: Path) -> dict[str, int]:
    """Ask ``server`` once for each read scenario's sample request (anonymous, as wrk does) and keep
    its answer in ``folder`` for the ceiling (``<slug>.body`` and ``<slug>.json``: status and
    headers); returns each scenario's body size in bytes."""
    sizes = {}
    for scenario in scenarios:
        if scenario.sample is None:
            continue
        request = urllib.request.Request(server.url + scenario.sample(facts))
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, reason, headers, body = answer.status, answer.reason, answer.getheaders(), answer.read()
        except urllib.error.HTTPError as exc:
            status, reason, headers, body = exc.code, exc.reason, list(exc.headers.items()), exc.read()
        except OSError as exc:
            raise ServerError(
                f"capturing the answer to {scenario.sample(facts)}: {exc!r}\n{server.log_tail()}"
            ) from None
        (folder / f"{slug(scenario.name)}.body").write_bytes(body)
        meta = {"status": f"{status} {reason}", "headers": headers, "request": scenario.sample(facts)}
        (folder / f"{slug(scenario.name)}.json").write_text(json.dumps(meta), encoding="utf-8")
        sizes[scenario.name] = len(body)
    return sizes


class JsonServerMissing(Exception):
    """json-server or a Node.js recent enough for it is not installed and could not be."""


def node_version(node: str) -> tuple[int, ...]:
    """``node --version`` as numbers (empty when it does not run)."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", out)[:3])


def json_server_command() -> tuple[list[str], str]:
    """The command that starts json-server 1.0 (before its options) and its version.

    Installs bench/package.json's pinned json-server and Node.js into bench/node_modules with npm
    when they are not there yet.
    """
    if not (JSON_SERVER_DIR / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise JsonServerMissing("npm is not installed; install Node.js and npm, or pass --no-json-server")
        print("installing json-server into bench/node_modules (npm ci)", file=sys.stderr)
        done = subprocess.run([npm, "ci", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode != 0:
            raise JsonServerMissing(f"npm ci --prefix bench failed:\n{done.stdout}{done.stderr}")
    version = json.loads((JSON_SERVER_DIR / "package.json").read_text(encoding="utf-8"))["version"]
    for node in (str(NODE_IN_BENCH), shutil.which("node")):
        if node and node_version(node) >= (22, 12):
            return [node, str(JSON_SERVER_DIR / "lib" / "bin.js")], version
    raise JsonServerMissing("json-server 1.0 needs Node.js >= 22.12 (bench/package.json installs one with npm ci)")


class JsonServer(Managed):
    """json-server 1.0 (one Node.js process) on a temporary ``db.json`` holding ``{"books": [...]}``,
    the same records as the catalogue. A context manager like :class:`Server`.

    json-server has no sign-in: wrk's write scripts still send the (unused) token they need.
    """

    def __init__(self, catalogue: Path, command: list[str]) -> None:
        self.catalogue = catalogue
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "unused"
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def start(self) -> None:
        """Write db.json, start json-server on it, wait until it answers and is idle."""
        self.tmp = Path(tempfile.mkdtemp(prefix="library-bench-json-server-"))
        books = json.loads(self.catalogue.read_text(encoding="utf-8"))["books"]
        (self.tmp / "db.json").write_text(json.dumps({"books": books}, indent=2), encoding="utf-8")
        # As deployed: NODE_ENV=production (templates cached; sirv indexes ./public once, so it must exist).
        (self.tmp / "public").mkdir()
        env = dict(os.environ, NODE_ENV="production")
        command = [*self.command, "--host", "127.0.0.1", "--port", str(self.port), "db.json"]
        with open(self.tmp / "server.log", "wb") as log:
            began = time.monotonic()
            self.proc = subprocess.Popen(
                command, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url + "/books/1", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"json-server did not answer within {STARTUP_TIMEOUT:g} s\n{self.log_tail()}")
            time.sleep(0.05)
        self.startup_s = time.monotonic() - began
        self.settle(SETTLE_TIMEOUT)

    def settle(self, timeout: float, quiet: float = 0.5) -> bool:
        """Wait until json-server used no CPU for ``quiet`` seconds; False when it was still busy
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        previous = -1
        while time.monotonic() < deadline:
            self.check_alive()
            ticks = self.cpu_ticks()
            if ticks == previous:
                return True
            previous = ticks
            time.sleep(quiet)
        return False

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.proc.pid) if self.proc is not None else 0

    def cpu_seconds(self) -> float:
        """CPU time used so far by json-server's process (all its threads)."""
        return self.cpu_ticks() / CLOCK_TICKS

    def rss_mb(self) -> float:
        return rss_kib(self.proc.pid) / 1024 if self.proc is not None else 0.0

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"json-server exited with code {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.tmp / "server.log").read_text(errors="replace") if self.tmp else ""
        except OSError:
            return "(no json-server log)"
        return "--- json-server log (end) ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- load-books --------------------------------------------------------------------------------------

PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print('BENCH_MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)
"""Runs its arguments as a command and prints the command's peak resident memory (as
``/usr/bin/time -v`` reports it: getrusage's ru_maxrss of the waited-for child, in KiB on Linux)."""


def load_books_peak(catalogue: Path) -> dict[str, Any]:
    """``python -m flask --app library_api load-books <catalogue>`` on a fresh, empty data directory,
    as an operator imports a catalogue; returns its peak RSS (MB), its wall time and its report."""
    with tempfile.TemporaryDirectory(prefix="library-bench-load-") as tmp:
        env = dict(os.environ, LIBRARY_DATA_DIR=str(Path(tmp) / "data"), LIBRARY_SEED_FILE="",
                   LIBRARY_SECRET_KEY=secrets.token_urlsafe(36))  # fmt: skip
        command = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "flask", "--app", "library_api",
                   "load-books", str(catalogue)]  # fmt: skip
        began = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        seconds = time.monotonic() - began
    peak = re.search(r"^BENCH_MAXRSS_KIB (\d+)$", done.stdout, re.MULTILINE)
    report = [line for line in done.stdout.splitlines() if not line.startswith("BENCH_MAXRSS_KIB")]
    return {
        "exit_code": done.returncode,
        "max_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "seconds": round(seconds, 2),
        "report": (report or done.stderr.strip().splitlines() or [""])[-1],
    }


# -- wrk ---------------------------------------------------------------------------------------------


class WrkError(Exception):
    """wrk failed or did not print the result line of common.lua."""


def run_wrk(
    wrk: str,
    url: str,
    token: str,
    scenario: Scenario,
    facts: Facts,
    run: int,
    duration: int,
    threads: int = WRK_THREADS,
    connections: int = WRK_CONNECTIONS,
    workload: tuple[str, list[str]] | None = None,
) -> dict[str, Any]:
    """One wrk run of ``scenario``; returns its req/s, latencies (ms), status counts and errors.

    ``workload`` replaces the scenario's script and arguments (for the ceiling and json-server). A
    writing scenario gets the bearer ``token`` in the environment (``BENCH_TOKEN``); the reads run
    without it, anonymous.
    """
    script, script_args = workload or (scenario.script, scenario.args(facts))
    command = [
        wrk, "--threads", str(threads), "--connections", str(connections), "--duration", f"{duration}s",
        "--timeout", WRK_TIMEOUT, "--latency", "--script", str(BENCH_DIR / script),
        url, "--", str(run), *script_args,
    ]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
    if scenario.writes:
        env[TOKEN_VARIABLE] = token
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise WrkError(f"wrk failed (exit {done.returncode}) on {scenario.name!r}:\n{done.stdout}{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    statuses = {int(code): n for code, n in raw["statuses"].items()}
    errors = raw["errors"]
    return {
        "requests": raw["requests"],
        "req_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "statuses": statuses,
        "non_2xx": sum(n for code, n in statuses.items() if not 200 <= code < 300),
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
    }


def run_watched(
    server: Server | JsonServer,
    wrk: str,
    scenario: Scenario,
    facts: Facts,
    run: int,
    duration: int,
    threads: int = WRK_THREADS,
    connections: int = WRK_CONNECTIONS,
    workload: tuple[str, list[str]] | None = None,
) -> dict[str, Any]:
    """:func:`run_wrk`, its result completed with ``cpu_ms_per_req``, the server's CPU time (master
    and workers, user + system) per completed request, which CPU taken by others changes much less
    than req/s; and with the shares of the machine's CPUs that others took meanwhile, which lower
    and scatter the figures: ``other_cpu``, used by processes other than the server and wrk, and
    ``steal``, kept by the hypervisor when the host is oversubscribed."""
    began = time.monotonic()
    used, stolen = machine_cpu_seconds()
    server_cpu, wrk_cpu = server.cpu_seconds(), children_cpu_seconds()
    result = run_wrk(wrk, server.url, server.token, scenario, facts, run, duration, threads, connections, workload)
    used_after, stolen_after = machine_cpu_seconds()
    server_cpu = server.cpu_seconds() - server_cpu
    wrk_cpu = children_cpu_seconds() - wrk_cpu
    capacity = (time.monotonic() - began) * (os.cpu_count() or 1)
    result["cpu_ms_per_req"] = server_cpu * 1000 / result["requests"] if result["requests"] else None
    result["other_cpu"] = max(0.0, used_after - used - server_cpu - wrk_cpu) / capacity
    result["steal"] = (stolen_after - stolen) / capacity
    return result


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of req/s, p50, p99 and the server's CPU ms per request over ``runs``, the totals
    of statuses and errors, and the largest share of the CPUs that others took in a run."""
    statuses: Counter[int] = Counter()
    for run in runs:
        statuses.update(run["statuses"])
    cpu_ms = [run["cpu_ms_per_req"] for run in runs if run["cpu_ms_per_req"] is not None]
    return {
        "scenario": name,
        "req_per_s": statistics.median(run["req_per_s"] for run in runs),
        "p50_ms": statistics.median(run["p50_ms"] for run in runs),
        "p99_ms": statistics.median(run["p99_ms"] for run in runs),
        "cpu_ms_per_req": statistics.median(cpu_ms) if cpu_ms else None,
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": sum(run["socket_errors"] for run in runs),
        "disturbed_cpu": max(run["other_cpu"] + run["steal"] for run in runs),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "runs": runs,
    }


# -- one catalogue size ------------------------------------------------------------------------------


def bench_size(
    size: int,
    scenarios: list[Scenario],
    args: argparse.Namespace,
    wrk: str,
    log_copy: Path,
    json_server: list[str] | None,
) -> dict:
    """Benchmark ``scenarios`` on a server holding ``size`` books, beside the ceiling (reads) and
    json-server (started with the command ``json_server``; None to leave it out); returns the
    dataset's result. When the server logged errors, its log is kept at ``log_copy``.

    Each run of a scenario measures the servers one after the other (ours, the ceiling,
    json-server), so that the three figures of a row come from the same minutes of a noisy machine.
    """
    catalogue = catalogue_file(size)
    facts = facts_of(catalogue)
    print(f"{size} books: flask load-books on an empty data directory", file=sys.stderr)
    load = load_books_peak(catalogue)
    print(f"  peak RSS {load['max_rss_mb']} MB, {load['seconds']} s: {load['report']}", file=sys.stderr)
    rows, memory = [], None
    reads = [scenario for scenario in scenarios if scenario.sample is not None]
    print(f"starting gunicorn on {size} books", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Server(catalogue, args.workers))
        first_workers = server.worker_pids()
        answers = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="library-bench-answers-")))
        body_bytes = capture_answers(server, scenarios, facts, answers)
        ceiling = stack.enter_context(CeilingServer(answers, args.workers)) if reads and args.ceiling else None
        others = stack.enter_context(JsonServer(catalogue, json_server)) if json_server else None
        server.settle(SETTLE_TIMEOUT)  # the capture's requests and the others' start-up are over
        for scenario in scenarios:
            if scenario.writes and memory is None:
                memory = memory_after_reads(server, ceiling, others)
            targets: dict[str, Server | JsonServer] = {"ours": server}
            if ceiling is not None and scenario.sample is not None:
                targets["ceiling"] = ceiling
            if others is not None and scenario.json_server is not None:
                targets["json-server"] = others
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            if scenario.writes:
                # Each worker's first write builds its writer index and catalogue structures (about
                # a second at 100k books): a warm-up, not what a running library pays per write.
                run_watched(server, wrk, scenario, facts, args.runs, WARMUP)
                server.settle(DRAIN_TIMEOUT, quiet=0.25)
            unsettled, began = [], time.monotonic()
            for run in range(args.runs):
                for name, target in targets.items():
                    if run and runs[name][0]["requests"] < SLOW_RUN_REQUESTS:
                        continue  # too slow to measure more than once in --duration
                    workload = {"ceiling": ("fixed.lua", [f"/{slug(scenario.name)}"]),
                                "json-server": scenario.json_server(facts) if scenario.json_server else None,
                                }.get(name)  # fmt: skip
                    runs[name].append(run_watched(target, wrk, scenario, facts, run, args.duration, workload=workload))
                    target.check_alive()
                    if not target.settle(DRAIN_TIMEOUT, quiet=0.25):
                        unsettled.append(name)
            row = summarize(scenario.name, runs["ours"])
            row["bytes"] = body_bytes.get(scenario.name)
            for name in ("ceiling", "json-server"):
                row[name] = summarize(scenario.name, runs[name]) if name in runs else None
            if scenario.json_server is not None:
                script, script_args = scenario.json_server(facts)
                row["json_server_request"] = json_server_request(scenario, script, script_args)
            if unsettled:
                row["unsettled"] = sorted(set(unsettled))
            row["once"] = [name for name, measured in runs.items() if len(measured) < args.runs]
            row["elapsed_s"] = round(time.monotonic() - began, 1)
            rows.append(row)
            print(f"  {format_row(row)}", file=sys.stderr)
        if memory is None:
            memory = memory_after_reads(server, ceiling, others)
        workers_replaced = server.worker_pids() != first_workers
        server.stop()
        problems = server.log_problems()
        if problems:
            log_copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(server.log_path, log_copy)
    warnings = []
    if load["exit_code"] != 0:
        warnings.append(f"flask load-books exited with {load['exit_code']}: {load['report']}")
    if server.health.get("books") != size:
        warnings.append(f"/healthz reported {server.health.get('books')} books at start-up, expected {size}")
    if workers_replaced:
        warnings.append("gunicorn replaced workers during the run (a crash or a timeout)")
    if problems:
        shown = "\n    ".join(problems[:6])
        kept = log_copy.relative_to(ROOT)
        warnings.append(f"{len(problems)} error line(s) in the server log (kept in {kept}), e.g.:\n    {shown}")
    for row in rows:
        if row.get("unsettled"):
            warnings.append(f"{row['scenario']}: {', '.join(row['unsettled'])} still busy "
                            f"{DRAIN_TIMEOUT:g} s after a run; the next runs were measured anyway")  # fmt: skip
    return {
        "size": size,
        "facts": asdict(facts),
        "workers": len(first_workers),
        "startup_s": round(server.startup_s, 3),
        "all_workers_ready_s": round(server.ready_s, 3),
        "memory_after_reads": memory,
        "workers_rss_mb": memory["ours_mb"],
        "load_books": load,
        "json_server_startup_s": round(others.startup_s, 3) if others else None,
        "scenarios": rows,
        "warnings": warnings + scenario_warnings(rows),
    }


def memory_after_reads(server: Server, ceiling: CeilingServer | None, others: JsonServer | None) -> dict[str, Any]:
    """The resident memory (MB) of our workers (together and each), of the ceiling's workers and of
    json-server's process, after the read scenarios."""
    return {
        "ours_mb": round(server.workers_rss_mb(), 1),
        "ours_per_worker_mb": server.each_worker_rss_mb(),
        "ceiling_mb": round(ceiling.workers_rss_mb(), 1) if ceiling else None,
        "json_server_mb": round(others.rss_mb(), 1) if others else None,
    }


def json_server_request(scenario: Scenario, script: str, script_args: list[str]) -> str:
    """What json-server is asked in a scenario, for the report (its query string decoded)."""
    if script == "cold.lua":
        return f"GET {unquote(script_args[0])}&{script_args[1]}=1..40"
    if script == "get_by_id.lua":
        return "GET /books/<random id>"
    if script == "create.lua":
        return "POST /books (the same bodies as ours)"
    if script == "update.lua":
        return 'PATCH /books/<random id> {"genre": …}'
    return f"GET {unquote(script_args[0])}"


def scenario_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What makes scenarios' figures suspect: errors (ours, the ceiling's or json-server's), or CPU
    taken by other processes or the hypervisor."""
    warnings = []
    for row in rows:
        for label, measured in (
            ("", row),
            (" (ceiling)", row.get("ceiling")),
            (" (json-server)", row.get("json-server")),
        ):
            if measured and (measured["non_2xx"] or measured["socket_errors"]):
                warnings.append(
                    f"{row['scenario']}{label}: {measured['non_2xx']} non-2xx answer(s), "
                    f"{measured['socket_errors']} socket error(s); statuses {measured['statuses']}"
                )
    disturbed = [f"{row['scenario']} {row['disturbed_cpu']:.0%}" for row in rows if row["disturbed_cpu"] > DISTURBED]
    if disturbed:
        warnings.append(
            "other processes or the hypervisor (steal) took CPU during the runs, so these figures are lower "
            "and noisier than on a quiet machine (largest share of the CPUs in a run): " + ", ".join(disturbed)
        )
    return warnings


# -- reporting ---------------------------------------------------------------------------------------


def flagged(measured: dict[str, Any] | None, missing: str = "–") -> str:
    """A req/s figure, with ⚠ when the runs had non-2xx answers or socket errors."""
    if measured is None:
        return missing
    flag = " ⚠" if measured["non_2xx"] or measured["socket_errors"] else ""
    return f"{measured['req_per_s']:.1f}{flag}" if measured["req_per_s"] < 10 else f"{measured['req_per_s']:.0f}{flag}"


def format_row(row: dict[str, Any]) -> str:
    """One scenario as a markdown table row."""
    cpu_ms = "–" if row["cpu_ms_per_req"] is None else f"{row['cpu_ms_per_req']:.3f}"
    ceiling = row.get("ceiling")
    share = f"{row['req_per_s'] / ceiling['req_per_s']:.0%}" if ceiling and ceiling["req_per_s"] else "–"
    json_server = flagged(row.get("json-server"), "n/a" if row.get("json_server_request") is None else "–")
    size = "–" if row.get("bytes") is None else f"{row['bytes']:,}"
    return (
        f"| {row['scenario']} | {flagged(row)} | {flagged(ceiling)} | {share} | {json_server} "
        f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cpu_ms} | {size} | {row['non_2xx']} | {row['socket_errors']} |"
    )


def markdown(result: dict[str, Any]) -> str:
    """The markdown report of one catalogue size."""
    lines = [f"### {result['size']:,} books", ""]
    if "error" in result:
        return "\n".join([*lines, f"**failed:** {result['error']}", ""])
    facts, memory, load = result["facts"], result["memory_after_reads"], result["load_books"]
    per_worker = " + ".join(f"{mb:.1f}" for mb in memory["ours_per_worker_mb"])
    others = []
    if memory["ceiling_mb"] is not None:
        others.append(f"ceiling's workers {memory['ceiling_mb']:.1f} MB")
    if memory["json_server_mb"] is not None:
        others.append(f"json-server {memory['json_server_mb']:.1f} MB")
    lines += [
        f"{result['workers']} gunicorn workers; first healthy /healthz {result['startup_s']:.2f} s after start, "
        f"all workers ready at {result['all_workers_ready_s']:.2f} s.",
        "",
        f"- **RSS after the read scenarios:** our workers {memory['ours_mb']:.1f} MB ({per_worker})"
        + (f"; {', '.join(others)}" if others else "")
        + ".",
        f"- **load-books peak:** {load['max_rss_mb']} MB max RSS, {load['seconds']:.1f} s "
        f"(`flask load-books` of the {result['size']:,} books into an empty data directory: {load['report']}).",
        f"- genre: {facts['genre']!r} ({facts['genre_matches']} books); genre+author: {facts['genre']!r} + "
        f"{facts['author']!r} ({facts['genre_author_matches']} books); q search: {facts['word']!r} "
        f"({facts['word_matches']} books).",
        "",
        "| op | ours req/s | ceiling req/s | % of ceiling | json-server req/s | p50 ms | p99 ms | cpu ms/req "
        "| bytes | non-2xx | socket errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(format_row(row) for row in result["scenarios"]),
    ]
    once = [f"{row['scenario']} ({', '.join(row['once'])})" for row in result["scenarios"] if row.get("once")]
    if once:
        lines += [
            "",
            f"Measured in one run only (fewer than {SLOW_RUN_REQUESTS} requests completed in the first): "
            + ", ".join(once)
            + ".",
        ]
    asked = [(row["scenario"], row.get("json_server_request")) for row in result["scenarios"] if row.get("json-server")]
    if asked:
        lines += ["", "json-server was asked (1.0 query syntax; it never fsyncs its writes):", ""]
        lines += [f"- {name}: `{request}`" for name, request in asked]
    if result["warnings"]:
        lines += ["", *(f"- **warning:** {warning}" for warning in result["warnings"])]
    return "\n".join([*lines, ""])


# -- command line ------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    """``1000,10000`` as a list of positive ints."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive numbers of books")
    return sizes


def parse_duration(text: str) -> int:
    """A duration in whole seconds: ``10``, ``10s`` or ``2m``."""
    match = re.fullmatch(r"(\d+)([sm]?)", text.strip())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"not a duration such as 10, 10s or 2m: {text!r}")
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def parse_runs(text: str) -> int:
    """The number of wrk runs per scenario: 1..MAX_RUNS."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS:
        raise argparse.ArgumentTypeError(f"runs must be a number from 1 to {MAX_RUNS}")
    return int(text)


def parse_scenarios(text: str) -> list[Scenario]:
    """Comma-separated scenario names (case-insensitive), kept in the order of :data:`SCENARIOS`."""
    wanted = {part.strip().lower() for part in text.split(",") if part.strip()}
    known = {scenario.name for scenario in SCENARIOS}
    unknown = wanted - known
    if unknown or not wanted:
        names = ", ".join(repr(scenario.name) for scenario in SCENARIOS)
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {sorted(unknown)}; choose from {names}")
    return [scenario for scenario in SCENARIOS if scenario.name in wanted]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[10000, 100000],
        help="catalogue sizes in books, comma-separated (default: 10000,100000)",
    )
    parser.add_argument(
        "--duration", type=parse_duration, default=3, help="length of each wrk run: 3, 3s or 2m (default: 3s)"
    )
    parser.add_argument(
        "--runs",
        type=parse_runs,
        default=3,
        help=f"wrk runs per scenario, 1..{MAX_RUNS}; medians are reported (default: 3)",
    )
    parser.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=list(SCENARIOS),
        help="comma-separated subset of: " + ", ".join(s.name for s in SCENARIOS),
    )
    parser.add_argument("--workers", type=int, help="gunicorn workers (WEB_CONCURRENCY; default: gunicorn.conf.py's)")
    parser.add_argument(
        "--no-json-server", dest="json_server", action="store_false", help="leave json-server out (no Node.js needed)"
    )
    parser.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="leave the ceiling (bench/ceiling.py under the same gunicorn config) out",
    )
    return parser.parse_args(argv)  # fmt: skip


def stop_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so that the server is stopped as on Ctrl-C."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every size was measured, 1 when one failed, 2 when wrk is missing."""
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed. Install it with `sudo apt-get install wrk` (Debian/Ubuntu) "
              "or `brew install wrk` (macOS), then run this again.", file=sys.stderr)  # fmt: skip
        return 2
    if not GUNICORN.exists():
        print(f"gunicorn is not installed next to {sys.executable}: install requirements.txt", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    json_server, json_server_version, json_server_note = None, None, None
    if args.json_server:
        try:
            json_server, json_server_version = json_server_command()
        except JsonServerMissing as exc:
            json_server_note = f"json-server left out: {exc}"
            print(json_server_note, file=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    report: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "duration_s": args.duration, "runs": args.runs, "wrk_threads": WRK_THREADS,
            "wrk_connections": WRK_CONNECTIONS, "wrk_timeout": WRK_TIMEOUT, "web_concurrency": args.workers,
            "scenarios": [s.name for s in args.scenarios], "ceiling": args.ceiling,
            "json_server": json_server_version, "json_server_note": json_server_note,
        },
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version,
            "node": ".".join(map(str, node_version(json_server[0]))) if json_server else None,
        },
        "datasets": [],
    }  # fmt: skip
    print(f"wrk: {WRK_THREADS} threads, {WRK_CONNECTIONS} connections, {args.duration} s x {args.runs} run(s), "
          f"timeout {WRK_TIMEOUT}; medians over runs, non-2xx and socket errors summed over runs; "
          f"ceiling: {'bench/ceiling.py under gunicorn.conf.py' if args.ceiling else 'left out'}; "
          f"json-server: {json_server_version or 'left out'}\n")  # fmt: skip
    failed = False
    for size in args.sizes:
        try:
            result = bench_size(
                size, args.scenarios, args, wrk, RESULTS_DIR / f"{stamp}-{size}-server.log", json_server
            )
        except (ServerError, WrkError) as exc:
            failed = True
            result = {"size": size, "error": str(exc)}
        report["datasets"].append(result)
        print(markdown(result), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
