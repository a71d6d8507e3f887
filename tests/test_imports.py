"""POST /imports: the CLI's load-books as an upload (the page's import), and the overview (GET
/stats) and genres (GET /genres) the page reads."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from library_api import create_app
from tests.conftest import BOOK, TEST_SECRET, Clock, add_member, assert_problem, client_as

SAMPLES = Path(__file__).resolve().parent / "samples"
EXPORTS = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".csv", ".tsv"))


def upload(client, content: bytes, name: str = "books.csv", **form: str):
    data: dict[str, Any] = {"file": (io.BytesIO(content), name), **form}
    return client.post("/imports", data=data, content_type="multipart/form-data")


def printed(report: dict[str, Any]) -> str:
    """The report as load-books prints it (the part after any progress bar)."""
    out = [f"line {row['line']}: {row['text']}" for row in report["lines"]]
    if report["unchanged_lines"]:
        spans = report["unchanged_lines"]
        out.append(f"unchanged (each the same as its book): line{'s' if ',' in spans or '-' in spans else ''} {spans}")
    prefix = "dry run: would have " if report["dry_run"] else ""
    out.append(
        f"{prefix}created {report['created']}, updated {report['updated']}, unchanged {report['unchanged']}, "
        f"skipped {report['skipped']}, merged {report['merged']}, warnings {report['warnings']} "
        f"(of {report['rows']} rows in {report['file']}, read as {report['format_name']})"
    )
    return "\n".join(out) + "\n"


def data_files(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def fresh_app(data_dir: Path):
    return create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})


@pytest.mark.parametrize("name", EXPORTS)
@pytest.mark.parametrize("dry_run", [False, True])
def test_an_import_reports_what_the_cli_prints(tmp_path, name, dry_run):
    cli_app, web_app = fresh_app(tmp_path / "cli"), fresh_app(tmp_path / "web")
    options = ["--dry-run"] if dry_run else []
    result = cli_app.test_cli_runner().invoke(args=["load-books", *options, str(SAMPLES / name)])
    assert result.exit_code == 0, result.output
    desk = client_as(web_app, "librarian")
    response = upload(desk, (SAMPLES / name).read_bytes(), name, dry_run=str(dry_run).lower())
    assert response.status_code == 200, response.get_data(as_text=True)
    report = response.get_json()
    assert report["file"] == name and report["dry_run"] is dry_run
    assert report["format"] == ("goodreads" if name.startswith("goodreads") else "librarything")
    assert printed(report) == result.output


def test_a_goodreads_export_creates_its_books_and_a_second_import_changes_nothing(app, client):
    export = (SAMPLES / "goodreads_library_export.csv").read_bytes()
    first = upload(client, export, "goodreads_library_export.csv").get_json()
    assert (first["created"], first["updated"], first["skipped"], first["rows"]) == (8, 0, 0, 8)
    assert first["format_name"] == "Goodreads CSV export"
    assert any(row["line"] == 10 and row["text"].startswith("warning: isbn dropped") for row in first["lines"])
    titles = {b["title"] for b in client.get("/books?limit=100").get_json()["books"]}
    assert {"Dune", "The Hobbit", "Project Hail Mary"} <= titles
    again = upload(client, export, "goodreads_library_export.csv").get_json()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 8)
    assert again["unchanged_lines"].startswith("2")


def test_our_json_imports_and_its_books_go_out_as_live_events(client, anon):
    seq = anon.get("/changes").get_json()["last_seq"]
    books = [{**BOOK, "isbn": None, "title": f"Book {n}"} for n in range(3)]
    report = upload(client, json.dumps({"books": books}).encode(), "mine.json").get_json()
    assert (report["format"], report["format_name"], report["created"], report["rows"]) == ("json", "JSON", 3, 3)
    events = anon.get(f"/changes?since={seq}").get_json()["changes"]
    assert [(e["action"], e["book"]["title"]) for e in events] == [("created", f"Book {n}") for n in range(3)]


def test_skipped_rows_come_with_their_line_and_reason(client):
    text = b"title,author\nGood Book,Some One\n,Nobody's Title\n"
    report = upload(client, text).get_json()
    assert (report["created"], report["skipped"]) == (1, 1)
    assert report["lines"] == [{"line": 3, "text": "skipped: title: The row has no title."}]


def test_a_dry_run_writes_nothing(client, data_dir):
    before = data_files(data_dir)
    report = upload(client, (SAMPLES / "librarything_export.tsv").read_bytes(), "lt.tsv", dry_run="true").get_json()
    assert report["dry_run"] is True and report["created"] == 7
    assert data_files(data_dir) == before
    assert client.get("/books").get_json()["total"] == 0


def test_a_member_may_not_import(app):
    member = client_as(app, "member")
    assert_problem(upload(member, b"title,author\nA,B\n"), 403, "Only librarians and admins can do this")


def test_importing_needs_a_sign_in(anon):
    assert_problem(upload(anon, b"title,author\nA,B\n"), 401)


def test_a_file_over_the_upload_limit_is_413_and_leaves_nothing(data_dir):
    app = create_app(
        {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "MAX_UPLOAD_MB": 0.01}
    )
    client = client_as(app, "librarian")
    body = assert_problem(upload(client, b"title,author\n" + b"A long title,Some Author\n" * 1000), 413)
    assert "0.01 MB" in body["detail"]
    assert client.get("/books").get_json()["total"] == 0
    assert not [p for p in (data_dir / "uploads").iterdir()]  # the spooled upload is gone


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "a binary file"),
        (b"{not json", "not valid JSON at line 1"),
        (b"name;colour\nx;y\n", "not a book file"),
    ],
)
def test_a_file_that_is_no_book_file_is_422_naming_the_file(client, content, words):
    body = assert_problem(upload(client, content, "mine.txt"), 422)
    assert body["detail"].startswith("mine.txt: ") and words in body["detail"]


@pytest.mark.parametrize(
    ("form", "field"),
    [({}, "file"), ({"dry_run": "perhaps"}, "dry_run"), ({"extra": "1"}, "extra")],
)
def test_a_form_without_a_file_or_with_bad_fields_is_422(client, form, field):
    if field == "file":
        response = client.post("/imports", data=form, content_type="multipart/form-data")
    else:
        response = upload(client, b"title,author\nA,B\n", **form)
    assert field in assert_problem(response, 422)["errors"]


def test_json_instead_of_a_form_is_415(client):
    assert_problem(client.post("/imports", json={"books": []}), 415)


def test_openapi_describes_the_new_routes(anon):
    doc = anon.get("/openapi.json").get_json()
    post = doc["paths"]["/imports"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(form) == {"file", "dry_run"}
    assert {"200", "401", "403", "413", "415", "422"} <= set(post["responses"])
    assert {"200", "401", "403"} <= set(doc["paths"]["/stats"]["get"]["responses"])
    assert "200" in doc["paths"]["/genres"]["get"]["responses"]


# -- GET /genres ---------------------------------------------------------------------------------


def test_genres_are_sorted_once_each_and_follow_the_catalogue(client, anon):
    for title, genre in [("A", "fantasy"), ("B", "History"), ("C", "Fantasy"), ("D", None), ("E", "art")]:
        assert client.post("/books", json={"title": title, "author": "X", "genre": genre}).status_code == 201
    response = anon.get("/genres")
    assert response.status_code == 200
    assert response.get_json() == {"genres": ["art", "fantasy", "History"]}
    assert anon.get("/genres", headers={"If-None-Match": response.headers["ETag"]}).status_code == 304
    client.post("/books", json={"title": "F", "author": "X", "genre": "Poetry"})
    assert anon.get("/genres").get_json() == {"genres": ["art", "fantasy", "History", "Poetry"]}


# -- GET /stats ----------------------------------------------------------------------------------


@pytest.fixture
def clocked(data_dir):
    clock = Clock(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))  # a Thursday
    app = create_app(
        {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "CLOCK": clock}
    )
    app.clock = clock
    return app


def test_stats_count_the_library_and_chart_its_loans(clocked):
    desk = client_as(clocked, "librarian")
    ids = [desk.post("/books", json={**BOOK, "isbn": None, "title": f"Book {n}"}).get_json()["id"] for n in range(3)]
    ann, bob = add_member(clocked, "ann@example.org"), add_member(clocked, "bob@example.org")
    three_weeks_ago = (clocked.clock.now - timedelta(weeks=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lend = {"member_id": ann["id"], "days": 7, "borrowed_at": three_weeks_ago}
    assert desk.post(f"/books/{ids[0]}/borrow", json=lend).status_code == 201  # overdue by two weeks
    assert desk.post(f"/books/{ids[1]}/borrow", json={"member_id": bob["id"]}).status_code == 201
    assert desk.post(f"/books/{ids[1]}/return").status_code == 200
    assert desk.post(f"/books/{ids[1]}/borrow", json={"member_id": ann["id"]}).status_code == 201
    assert client_as(clocked, "member").post(f"/books/{ids[1]}/hold").status_code == 201
    stats = desk.get("/stats").get_json()
    assert {k: stats[k] for k in ("books", "active_loans", "overdue_now", "holds_waiting")} == {
        "books": 3, "active_loans": 2, "overdue_now": 1, "holds_waiting": 1,
    }  # fmt: skip
    assert stats["members"] == 4  # ann, bob, the desk and the member who placed the hold
    weeks = stats["loans_per_week"]
    assert len(weeks) == 12 and weeks[-1] == {"week": "2026-11-30", "loans": 2}
    assert weeks[-4] == {"week": "2026-11-09", "loans": 1} and weeks[0]["week"] == "2026-09-14"
    assert sum(w["loans"] for w in weeks) == 3
    assert stats["most_borrowed"] == [
        {"book_id": ids[1], "title": "Book 1", "loans": 2},
        {"book_id": ids[0], "title": "Book 0", "loans": 1},
    ]
    [late] = stats["overdue"]
    assert late["book_id"] == ids[0] and late["member_id"] == ann["id"] and late["member_name"] == "Ann Tester"
    assert late["days_overdue"] == 14 and late["title"] == "Book 0"


def test_stats_are_for_librarians(app, anon):
    assert_problem(anon.get("/stats"), 401)
    assert_problem(client_as(app, "member").get("/stats"), 403)
    empty = client_as(app, "admin").get("/stats").get_json()
    assert empty["books"] == 0 and empty["most_borrowed"] == [] and empty["overdue"] == []
    assert [w["loans"] for w in empty["loans_per_week"]] == [0] * 12
