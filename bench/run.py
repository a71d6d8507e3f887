#!/usr/bin/env python3
"""Benchmark of library_api under gunicorn, driven by wrk.

For each catalogue size: generate (once, cached under bench/data/<N>/) a synthetic catalogue, start
the server exactly as the Procfile does on a fresh copy of it, run every scenario with wrk a few
times, and report the median req/s, p50 and p99 latency, the server's CPU time per request, the
answers that were not 2xx, the workers' memory and the start-up time. Prints a markdown table per
size and writes the same as JSON to bench/results/<timestamp>.json.

    python bench/run.py --sizes 10000 --duration 10 --runs 3

Standard library only; needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
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
from typing import Any
from urllib.parse import quote, urlencode

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DATA_CACHE = BENCH_DIR / "data"
RESULTS_DIR = BENCH_DIR / "results"
GUNICORN = Path(sys.executable).parent / "gunicorn"
BENCH_EMAIL = "bench@example.org"  # the librarian (an admin, made by `flask create-admin`) who writes
TOKEN_VARIABLE = "BENCH_TOKEN"  # how wrk's write scripts get the bearer token (common.lua reads it)

WRK_THREADS = 2
WRK_CONNECTIONS = 8
WRK_TIMEOUT = "30s"  # gunicorn's worker timeout: wrk drops slower answers from the percentiles
STARTUP_TIMEOUT = 120.0
SETTLE_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
MAX_RUNS = 70  # create.lua gives each run its own block of ISBNs; it has room for 70
CREATED_AT = "2026-01-01T00:00:00Z"
DISTURBED = 0.10  # share of the CPUs taken by others (processes, the hypervisor) that makes a run suspect
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

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
    author: str
    genre_author_matches: int
    word: str
    word_matches: int


def facts_of(path: Path) -> Facts:
    """Pick query values from the catalogue at ``path``: the most common genre + author pair, and
    the most common title word of five letters or more (counted as ``q`` matches: in the title,
    author or ISBN, case-insensitive)."""
    books = json.loads(path.read_text(encoding="utf-8"))["books"]
    pairs = Counter((book["genre"], book["author"]) for book in books)
    (genre, author), pair_count = pairs.most_common(1)[0]
    words = Counter(w.lower() for book in books for w in book["title"].split() if len(w) >= 5)
    word = words.most_common(1)[0][0]
    texts = (f"{b['title']}\x1f{b['author']}\x1f{b['isbn']}".lower() for b in books)
    return Facts(len(books), genre, author, pair_count, word, sum(word in text for text in texts))


# -- scenarios ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One wrk workload: a Lua script in bench/ and the arguments it gets after the run number.

    Writing scenarios are signed in (a librarian's bearer token); the others send no token, as the
    server's read cache skips requests that carry Authorization.
    """

    name: str
    script: str
    args: Callable[[Facts], list[str]]
    writes: bool = False


def books_path(**params: str) -> str:
    """``/books`` with ``params`` as its query string."""
    return "/books?" + urlencode(params, quote_via=quote) if params else "/books"


SCENARIOS = (
    Scenario("list page 1", "fixed.lua", lambda f: [books_path()]),
    Scenario("page 50 by title", "fixed.lua", lambda f: [books_path(page="50", sort_by="title")]),
    Scenario("by title cold", "cold.lua", lambda f: [books_path(sort_by="title")]),
    Scenario("genre+author", "fixed.lua", lambda f: [books_path(genre=f.genre, author=f.author)]),
    Scenario("genre+author cold", "cold.lua", lambda f: [books_path(genre=f.genre, author=f.author)]),
    Scenario("q search", "fixed.lua", lambda f: [books_path(q=f.word)]),
    Scenario("q search cold", "cold.lua", lambda f: [books_path(q=f.word)]),
    Scenario("get by id", "get_by_id.lua", lambda f: [str(f.size)]),
    Scenario("create", "create.lua", lambda f: list(GENRES), writes=True),
    Scenario("update", "update.lua", lambda f: [str(f.size), *GENRES], writes=True),
)
"""Every scenario, reads first: the workers' memory is measured before the first write."""


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


class Server:
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

    def __enter__(self) -> Server:
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
        command = [str(GUNICORN), "--config", "gunicorn.conf.py", "library_api:create_app()"]
        with open(self.log_path, "wb") as log:
            began = time.monotonic()
            # A session of its own: Ctrl-C reaches this script, which then stops the server itself.
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.health = self.wait_healthy()
        self.startup_s = time.monotonic() - began
        self.wait_idle()
        self.ready_s = time.monotonic() - began
        self.token = self.sign_in()
        self.wait_idle()  # the workers take in the new member and the sign-in before anything is measured

    def sign_in(self) -> str:
        """Make a librarian as an operator does (``flask create-admin``, in the server's environment,
        on its data directory) and sign them in with ``POST /auth/login``; returns the bearer token."""
        password = secrets.token_urlsafe(24)
        command = [sys.executable, "-m", "flask", "--app", "library_api", "create-admin", BENCH_EMAIL,
                   "--password", password]  # fmt: skip
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
        deadline = time.monotonic() + SETTLE_TIMEOUT
        previous: dict[int, int] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            sample = {pid: cpu_ticks(pid) for pid in self.worker_pids()}
            if sample and sample == previous:
                return
            previous = sample
            time.sleep(0.5)
        raise ServerError(f"the workers were still busy {SETTLE_TIMEOUT:g} s after start-up\n{self.log_tail()}")

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
) -> dict[str, Any]:
    """One wrk run of ``scenario``; returns its req/s, latencies (ms), status counts and errors.

    A writing scenario gets the bearer ``token`` in the environment (``BENCH_TOKEN``); the reads run
    without it, anonymous.
    """
    command = [
        wrk, "--threads", str(threads), "--connections", str(connections), "--duration", f"{duration}s",
        "--timeout", WRK_TIMEOUT, "--latency", "--script", str(BENCH_DIR / scenario.script),
        url, "--", str(run), *scenario.args(facts),
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
    server: Server,
    wrk: str,
    scenario: Scenario,
    facts: Facts,
    run: int,
    duration: int,
    threads: int = WRK_THREADS,
    connections: int = WRK_CONNECTIONS,
) -> dict[str, Any]:
    """:func:`run_wrk`, its result completed with ``cpu_ms_per_req``, the server's CPU time (master
    and workers, user + system) per completed request, which CPU taken by others changes much less
    than req/s; and with the shares of the machine's CPUs that others took meanwhile, which lower
    and scatter the figures: ``other_cpu``, used by processes other than the server and wrk, and
    ``steal``, kept by the hypervisor when the host is oversubscribed."""
    began = time.monotonic()
    used, stolen = machine_cpu_seconds()
    server_cpu, wrk_cpu = server.cpu_seconds(), children_cpu_seconds()
    result = run_wrk(wrk, server.url, server.token, scenario, facts, run, duration, threads, connections)
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


def bench_size(size: int, scenarios: list[Scenario], args: argparse.Namespace, wrk: str, log_copy: Path) -> dict:
    """Benchmark ``scenarios`` on a server holding ``size`` books; returns the dataset's result.

    When the server logged errors, its log is kept at ``log_copy``.
    """
    catalogue = catalogue_file(size)
    facts = facts_of(catalogue)
    rows, rss_mb = [], None
    print(f"starting gunicorn on {size} books", file=sys.stderr)
    with Server(catalogue, args.workers) as server:
        first_workers = server.worker_pids()
        for scenario in scenarios:
            if scenario.writes and rss_mb is None:
                rss_mb = server.workers_rss_mb()
            runs = []
            for run in range(args.runs):
                runs.append(run_watched(server, wrk, scenario, facts, run, args.duration))
                server.check_alive()
            rows.append(summarize(scenario.name, runs))
            print(f"  {format_row(rows[-1])}", file=sys.stderr)
        if rss_mb is None:
            rss_mb = server.workers_rss_mb()
        workers_replaced = server.worker_pids() != first_workers
        server.stop()
        problems = server.log_problems()
        if problems:
            log_copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(server.log_path, log_copy)
    warnings = []
    if server.health.get("books") != size:
        warnings.append(f"/healthz reported {server.health.get('books')} books at start-up, expected {size}")
    if workers_replaced:
        warnings.append("gunicorn replaced workers during the run (a crash or a timeout)")
    if problems:
        shown = "\n    ".join(problems[:6])
        kept = log_copy.relative_to(ROOT)
        warnings.append(f"{len(problems)} error line(s) in the server log (kept in {kept}), e.g.:\n    {shown}")
    return {
        "size": size,
        "facts": asdict(facts),
        "workers": len(first_workers),
        "startup_s": round(server.startup_s, 3),
        "all_workers_ready_s": round(server.ready_s, 3),
        "workers_rss_mb": round(rss_mb, 1),
        "scenarios": rows,
        "warnings": warnings + scenario_warnings(rows),
    }


def scenario_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What makes scenarios' figures suspect: errors, or CPU taken by other processes or the hypervisor."""
    warnings = [
        f"{row['scenario']}: {row['non_2xx']} non-2xx answer(s), {row['socket_errors']} socket error(s); "
        f"statuses {row['statuses']}"
        for row in rows
        if row["non_2xx"] or row["socket_errors"]
    ]
    disturbed = [f"{row['scenario']} {row['disturbed_cpu']:.0%}" for row in rows if row["disturbed_cpu"] > DISTURBED]
    if disturbed:
        warnings.append(
            "other processes or the hypervisor (steal) took CPU during the runs, so these figures are lower "
            "and noisier than on a quiet machine (largest share of the CPUs in a run): " + ", ".join(disturbed)
        )
    return warnings


# -- reporting ---------------------------------------------------------------------------------------


def format_row(row: dict[str, Any]) -> str:
    """One scenario as a markdown table row."""
    flag = " ⚠" if row["non_2xx"] or row["socket_errors"] else ""
    cpu_ms = "–" if row["cpu_ms_per_req"] is None else f"{row['cpu_ms_per_req']:.3f}"
    return (
        f"| {row['scenario']} | {row['req_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cpu_ms} "
        f"| {row['non_2xx']}{flag} | {row['socket_errors']} |"
    )


def markdown(result: dict[str, Any]) -> str:
    """The markdown report of one catalogue size."""
    lines = [f"### {result['size']:,} books", ""]
    if "error" in result:
        return "\n".join([*lines, f"**failed:** {result['error']}", ""])
    facts = result["facts"]
    lines += [
        f"{result['workers']} gunicorn workers; first healthy /healthz {result['startup_s']:.2f} s after start, "
        f"all workers ready at {result['all_workers_ready_s']:.2f} s; workers' RSS {result['workers_rss_mb']:.1f} MB "
        "after the read scenarios.",
        f"genre+author: {facts['genre']!r} + {facts['author']!r} ({facts['genre_author_matches']} books); "
        f"q search: {facts['word']!r} ({facts['word_matches']} books).",
        "",
        "| scenario | req/s | p50 ms | p99 ms | cpu ms/req | non-2xx | socket errors |",
        "|---|--:|--:|--:|--:|--:|--:|",
        *(format_row(row) for row in result["scenarios"]),
    ]
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
        default=[1000, 10000, 100000],
        help="catalogue sizes in books, comma-separated (default: 1000,10000,100000)",
    )
    parser.add_argument(
        "--duration", type=parse_duration, default=10, help="length of each wrk run: 10, 10s or 2m (default: 10s)"
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    report: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "duration_s": args.duration, "runs": args.runs, "wrk_threads": WRK_THREADS,
            "wrk_connections": WRK_CONNECTIONS, "wrk_timeout": WRK_TIMEOUT, "web_concurrency": args.workers,
            "scenarios": [s.name for s in args.scenarios],
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version},
        "datasets": [],
    }  # fmt: skip
    print(f"wrk: {WRK_THREADS} threads, {WRK_CONNECTIONS} connections, {args.duration} s x {args.runs} run(s), "
          f"timeout {WRK_TIMEOUT}; "
          f"medians over runs, non-2xx and socket errors summed over runs\n")  # fmt: skip
    failed = False
    for size in args.sizes:
        try:
            result = bench_size(size, args.scenarios, args, wrk, RESULTS_DIR / f"{stamp}-{size}-server.log")
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
