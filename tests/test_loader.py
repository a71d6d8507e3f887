"""`flask load-books` and the data directory's starting catalogue, as SPEC.md ("Books") describes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

DUNE = {
    "title": "Dune", "author": "Frank Herbert", "genre": "Science Fiction", "publisher": "Chilton",
    "publication_year": 1965, "isbn": "9780441172719",
}  # fmt: skip
HOBBIT = {
    "title": "The Hobbit", "author": "J. R. R. Tolkien", "genre": "Fantasy", "publisher": "Allen & Unwin",
    "publication_year": 1937, "isbn": "9780547928227",
}  # fmt: skip
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
CSV_HEADER = "title,author,genre,publisher,publication_year,isbn"


def csv_line(book: dict[str, Any]) -> str:
    return ",".join(str(book[k]) for k in CSV_HEADER.split(","))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(runner, path: Path, *options: str):
    return runner.invoke(args=["load-books", *options, str(path)])


def counts(output: str) -> dict[str, int]:
    """The created/updated/unchanged/skipped counts the command reports."""
    found = {}
    for word in ("created", "updated", "unchanged", "skipped"):
        match = re.search(rf"\b{word}\W+(\d+)", output, re.IGNORECASE)
        assert match, f"no {word} count in: {output}"
        found[word] = int(match.group(1))
    return found


def line_report(output: str, line: int) -> str:
    """The output line that reports file line ``line``."""
    matches = [text for text in output.splitlines() if re.search(rf"\bline {line}\b", text, re.IGNORECASE)]
    assert matches, f"line {line} is not reported in: {output}"
    return matches[0]


def catalogue(client) -> dict[str, Any]:
    response = client.get("/books?limit=100")
    assert response.status_code == 200
    return response.get_json()


# -- file formats --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("books.json", json.dumps([DUNE, HOBBIT], indent=2)),
        ("books.json", json.dumps({"books": [DUNE, HOBBIT]}, indent=2)),
        ("books.csv", "\n".join([CSV_HEADER, csv_line(DUNE), csv_line(HOBBIT)]) + "\n"),
    ],
    ids=["json-list", "json-object", "csv"],
)
def test_load_creates_the_books(runner, client, tmp_path, name, text):
    result = load(runner, write(tmp_path, name, text))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 2, "updated": 0, "unchanged": 0, "skipped": 0}
    books = catalogue(client)["books"]
    assert [{k: b[k] for k in DUNE} for b in books] == [DUNE, HOBBIT]


def test_load_reports_updated_and_unchanged(runner, client, tmp_path):
    assert load(runner, write(tmp_path, "first.json", json.dumps([DUNE, HOBBIT]))).exit_code == 0
    third = {**DUNE, "title": "Children of Dune", "publication_year": 1976, "isbn": "9780441104024"}
    result = load(runner, write(tmp_path, "second.json", json.dumps([{**DUNE, "genre": "SF"}, HOBBIT, third])))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 1, "updated": 1, "unchanged": 1, "skipped": 0}
    books = catalogue(client)
    assert books["total"] == 3
    assert books["books"][0]["genre"] == "SF"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("books.json", json.dumps({"books": [DUNE, HOBBIT]}, indent=2)),
        ("books.csv", "\n".join([CSV_HEADER, csv_line(DUNE), csv_line(HOBBIT)]) + "\n"),
    ],
    ids=["json", "csv"],
)
def test_reimport_changes_nothing(runner, client, tmp_path, name, text):
    path = write(tmp_path, name, text)
    assert load(runner, path).exit_code == 0
    before = catalogue(client)
    etag = client.get("/books").headers["ETag"]
    result = load(runner, path)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 0, "updated": 0, "unchanged": 2, "skipped": 0}
    assert catalogue(client) == before
    assert client.get("/books", headers={"If-None-Match": etag}).status_code == 304


def test_import_of_the_sample_catalogue_into_itself_changes_nothing(seeded_app, tmp_path):
    client = seeded_app.test_client()
    before = catalogue(client)
    result = seeded_app.test_cli_runner().invoke(args=["load-books", str(ROOT / "books.json")])
    assert result.exit_code == 0, result.output
    assert counts(result.output)["created"] == 0 and counts(result.output)["updated"] == 0
    assert catalogue(client) == before


# -- skipped rows --------------------------------------------------------------------------------


def test_skipped_csv_rows_are_reported_with_line_and_reason(runner, client, tmp_path):
    rows = [
        CSV_HEADER,  # line 1
        csv_line(DUNE),  # line 2
        csv_line({**HOBBIT, "isbn": "9780547928228"}),  # line 3: bad checksum
        csv_line({**HOBBIT, "title": "", "isbn": ""}),  # line 4: no title
        csv_line({**HOBBIT, "author": "Somebody Else", "isbn": DUNE["isbn"]}),  # line 5: ISBN of another author's book
        csv_line({**HOBBIT, "publication_year": "soon"}),  # line 6: year not a number
        csv_line(HOBBIT),  # line 7
    ]
    result = load(runner, write(tmp_path, "books.csv", "\n".join(rows) + "\n"))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 2, "updated": 0, "unchanged": 0, "skipped": 4}
    assert "isbn" in line_report(result.output, 3).lower()
    assert "title" in line_report(result.output, 4).lower()
    assert "isbn already exists" in line_report(result.output, 5).lower()
    assert "publication_year" in line_report(result.output, 6).lower()
    assert catalogue(client)["total"] == 2


def test_skipped_json_rows_are_reported_with_their_file_line(runner, client, tmp_path):
    items = [DUNE, {**HOBBIT, "isbn": "123"}, {"author": "X"}]  # on lines 2, 3 and 4
    text = "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n"
    result = load(runner, write(tmp_path, "books.json", text))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 1, "updated": 0, "unchanged": 0, "skipped": 2}
    assert "isbn" in line_report(result.output, 3).lower()
    assert "title" in line_report(result.output, 4).lower()


def test_row_that_is_not_an_object_is_skipped(runner, client, tmp_path):
    result = load(runner, write(tmp_path, "books.json", "[\n" + json.dumps(DUNE) + ",\n42\n]\n"))
    assert result.exit_code == 0, result.output
    assert counts(result.output)["skipped"] == 1
    line_report(result.output, 3)
    assert catalogue(client)["total"] == 1


# -- dry run -------------------------------------------------------------------------------------


def test_dry_run_writes_nothing_but_reports(runner, client, tmp_path):
    result = load(runner, write(tmp_path, "books.json", json.dumps([DUNE, HOBBIT])), "--dry-run")
    assert result.exit_code == 0, result.output
    assert counts(result.output)["created"] == 2
    assert catalogue(client)["total"] == 0
    assert client.get("/healthz").status_code == 200


def test_dry_run_of_updates_writes_nothing(runner, client, tmp_path):
    assert load(runner, write(tmp_path, "first.json", json.dumps([DUNE]))).exit_code == 0
    before = catalogue(client)
    result = load(runner, write(tmp_path, "second.json", json.dumps([{**DUNE, "genre": "SF"}, HOBBIT])), "--dry-run")
    assert result.exit_code == 0, result.output
    assert counts(result.output)["created"] == 1 and counts(result.output)["updated"] == 1
    assert catalogue(client) == before


def test_after_a_dry_run_a_real_import_still_works(runner, client, tmp_path):
    path = write(tmp_path, "books.json", json.dumps([DUNE, HOBBIT]))
    assert load(runner, path, "--dry-run").exit_code == 0
    result = load(runner, path)
    assert counts(result.output)["created"] == 2
    assert catalogue(client)["total"] == 2


# -- unreadable files ----------------------------------------------------------------------------


def test_missing_file_exits_non_zero(runner, client, tmp_path):
    result = load(runner, tmp_path / "missing.json")
    assert result.exit_code != 0
    assert catalogue(client)["total"] == 0


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("books.json", b'{"books": [{"title": "Dune"'),
        ("books.json", b"this is not json"),
        ("books.json", b'{"volumes": []}'),
        ("books.json", b"42"),
        ("books.txt", b"[1, 2"),
        ("cover.png", PNG_BYTES),
    ],
    ids=["truncated-json", "text-as-json", "object-without-books", "scalar", "broken-json-any-name", "binary"],
)
def test_file_that_is_not_json_or_csv_exits_non_zero(runner, client, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = load(runner, path)
    assert result.exit_code != 0, result.output
    assert catalogue(client)["total"] == 0


# -- the starting catalogue ----------------------------------------------------------------------


def test_new_data_directory_starts_with_the_sample_catalogue(seeded_app):
    sample = json.loads((ROOT / "books.json").read_text(encoding="utf-8"))["books"]
    body = catalogue(seeded_app.test_client())
    assert body["total"] == len(sample) == 60
    assert [(b["title"], b["isbn"]) for b in body["books"]] == [(b["title"], b["isbn"]) for b in sample]


def test_empty_seed_file_setting_starts_empty(client):
    assert catalogue(client)["total"] == 0
