"""`flask load-books` and the data directory's starting catalogue, as SPEC.md ("Books") describes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest

from library import loader
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


def counts(output: str, *extra: str) -> dict[str, int]:
    """The created/updated/unchanged/skipped counts (and ``extra`` ones: merged, warnings) the
    command's summary, its last line, reports."""
    summary = output.strip().splitlines()[-1]
    found = {}
    for word in ("created", "updated", "unchanged", "skipped", *extra):
        match = re.search(rf"\b{word}\W+(\d+)", summary, re.IGNORECASE)
        assert match, f"no {word} count in: {output}"
        found[word] = int(match.group(1))
    return found


def line_report(output: str, line: int) -> str:
    """The output lines that report file line ``line``."""
    matches = [text for text in output.splitlines() if re.search(rf"\bline {line}:", text, re.IGNORECASE)]
    assert matches, f"line {line} is not reported in: {output}"
    return "\n".join(matches)


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


def test_bad_values_are_dropped_with_a_warning_and_only_rows_that_are_no_book_skipped(runner, client, tmp_path):
    rows = [
        CSV_HEADER,  # line 1
        csv_line(DUNE),  # line 2
        csv_line({**HOBBIT, "isbn": "9780547928228"}),  # line 3: bad checksum
        csv_line({**HOBBIT, "title": "", "isbn": ""}),  # line 4: no title
        csv_line({**HOBBIT, "author": "Somebody Else", "isbn": DUNE["isbn"]}),  # line 5: ISBN of another book
        csv_line({**HOBBIT, "author": "", "isbn": ""}),  # line 6: no author
        csv_line({**HOBBIT, "title": "The Silmarillion", "publication_year": "soon", "isbn": ""}),  # line 7
        csv_line(HOBBIT),  # line 8: the book of line 3, now with its ISBN
    ]
    result = load(runner, write(tmp_path, "books.csv", "\n".join(rows) + "\n"))
    assert result.exit_code == 0, result.output
    assert counts(result.output, "merged", "warnings") == {
        "created": 4, "updated": 0, "unchanged": 0, "skipped": 2, "merged": 1, "warnings": 3,
    }  # fmt: skip
    assert "warning: isbn dropped: '9780547928228' (not a valid isbn-13" in line_report(result.output, 3).lower()
    assert "skipped: title: the row has no title" in line_report(result.output, 4).lower()
    assert "isbn 9780441172719 dropped: it is book 1's ('dune'" in line_report(result.output, 5).lower()
    assert "skipped: author: the row names no author" in line_report(result.output, 6).lower()
    assert "publication_year dropped: 'soon'" in line_report(result.output, 7).lower()
    assert "merged with line 3, book 2 ('the hobbit'); filled isbn" in line_report(result.output, 8).lower()
    books = {(b["title"], b["author"]): b for b in catalogue(client)["books"]}
    assert books[("The Hobbit", "J. R. R. Tolkien")]["isbn"] == HOBBIT["isbn"]
    assert books[("The Hobbit", "Somebody Else")]["isbn"] is None
    assert books[("The Silmarillion", "J. R. R. Tolkien")]["publication_year"] is None


def test_skipped_json_rows_are_reported_with_their_file_line(runner, client, tmp_path):
    items = [DUNE, {**HOBBIT, "isbn": "123"}, {"author": "X"}]  # on lines 2, 3 and 4
    text = "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n"
    result = load(runner, write(tmp_path, "books.json", text))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 2, "updated": 0, "unchanged": 0, "skipped": 1}
    assert "warning: isbn dropped: '123'" in line_report(result.output, 3).lower()
    assert "skipped: title" in line_report(result.output, 4).lower()


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


# -- Goodreads and LibraryThing exports ----------------------------------------------------------

SAMPLES = ROOT / "tests" / "samples"
GOODREADS = SAMPLES / "goodreads_library_export.csv"  # 8 rows; line 10 has a mistyped ISBN
LIBRARYTHING = SAMPLES / "librarything_export.tsv"  # 7 rows, Windows-1252; line 7 has a mistyped ISBN
EXPORTS = {
    "goodreads": (GOODREADS, {"created": 8, "updated": 0, "unchanged": 0, "skipped": 0}, 10),
    "librarything": (LIBRARYTHING, {"created": 7, "updated": 0, "unchanged": 0, "skipped": 0}, 7),
}


def by_title(client) -> dict[str, dict[str, Any]]:
    books = catalogue(client)["books"]
    return {b["title"]: {k: b[k] for k in DUNE} for b in books}


def data_files(data_dir: Path) -> dict[str, bytes]:
    """Every file of the data directory and its bytes."""
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def test_goodreads_export_is_imported(runner, client):
    result = load(runner, GOODREADS)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 8, "updated": 0, "unchanged": 0, "skipped": 0}
    assert "goodreads" in result.output.lower()
    report = line_report(result.output, 10).lower()  # after a two-line review
    assert "warning: isbn dropped" in report and "isbn-13: the check digit is wrong" in report
    books = by_title(client)
    assert books["Dune"] == {  # the series left out, ISBN13 out of ="...", the original year
        "title": "Dune", "author": "Frank Herbert", "genre": "Science Fiction", "publisher": "Ace Books",
        "publication_year": 1965, "isbn": "9780441172719",
    }  # fmt: skip
    assert books["The Hobbit"] == {  # only a reading shelf: no genre; initials spaced like the catalogue's
        "title": "The Hobbit", "author": "J. R. R. Tolkien", "genre": None, "publisher": "Houghton Mifflin Harcourt",
        "publication_year": 1937, "isbn": "9780547928227",
    }  # fmt: skip
    assert books["Project Hail Mary"] == {  # ISBNs ="": none; no original year: the edition's
        "title": "Project Hail Mary", "author": "Andy Weir", "genre": "Science Fiction",
        "publisher": "Ballantine Books", "publication_year": 2021, "isbn": None,
    }  # fmt: skip
    assert books["The Hitchhiker's Guide to the Galaxy"]["author"] == "Douglas Adams"  # "Douglas  Adams"
    assert books["The Name of the Wind"]["genre"] == "Fantasy"  # after the currently-reading shelf
    assert books["One Hundred Years of Solitude"]["author"] == "Gabriel García Márquez"
    assert books["Neuromancer"]["isbn"] is None  # kept, without the ISBN it was given


def test_librarything_export_is_imported(runner, client):
    raw = LIBRARYTHING.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the sample really is Latin-1, as LibraryThing writes it
    assert "García Márquez, Gabriel".encode("latin-1") in raw
    result = load(runner, LIBRARYTHING)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 7, "updated": 0, "unchanged": 0, "skipped": 0}
    assert "librarything" in result.output.lower()
    assert "isbn-10: the check digit is wrong" in line_report(result.output, 7).lower()
    books = by_title(client)
    assert books["Dune"] == {  # "Herbert, Frank"; [0441172717]; the publisher out of "Publication"
        "title": "Dune", "author": "Frank Herbert", "genre": "Science Fiction", "publisher": "Ace Books",
        "publication_year": 1965, "isbn": "0441172717",
    }  # fmt: skip
    assert books["Cien años de soledad"] == {
        "title": "Cien años de soledad", "author": "Gabriel García Márquez", "genre": "Realismo Mágico",
        "publisher": "Debolsillo", "publication_year": 1967, "isbn": "8497592204",
    }  # fmt: skip
    assert books["Le Petit Prince"]["author"] == "Antoine de Saint-Exupéry"
    assert books["Le Petit Prince"]["genre"] == "Jeunesse"  # after the to-read tag
    assert books["The Metamorphosis"]["isbn"] == "0553213695"  # from the ISBNs list only
    assert books["The Metamorphosis"]["genre"] is None
    assert books["Frøken Smillas fornemmelse for sne"]["author"] == "Peter Høeg"
    assert books["Frøken Smillas fornemmelse for sne"]["isbn"] is None
    assert books["The Hobbit"]["author"] == "J. R. R. Tolkien"
    assert books["Neuromancer"]["isbn"] is None


@pytest.mark.parametrize("export", EXPORTS)
def test_reimport_of_an_export_changes_nothing_on_disk(runner, client, data_dir, export):
    path, expected, _ = EXPORTS[export]
    assert counts(load(runner, path).output) == expected
    before = data_files(data_dir)
    result = load(runner, path)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {
        "created": 0, "updated": 0, "unchanged": expected["created"], "skipped": expected["skipped"],
    }  # fmt: skip
    assert data_files(data_dir) == before  # the journal included: not one line was written


@pytest.mark.parametrize("export", EXPORTS)
def test_dry_run_of_an_export_writes_nothing(runner, client, data_dir, export):
    path, expected, skipped_line = EXPORTS[export]
    before = data_files(data_dir)
    result = load(runner, path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert counts(result.output) == expected
    line_report(result.output, skipped_line)
    assert data_files(data_dir) == before
    assert catalogue(client)["total"] == 0


@pytest.mark.parametrize(
    ("export", "name"),
    [
        ("goodreads", "books.json"),
        ("goodreads", "library.tsv"),
        ("librarything", "export.csv"),
        ("librarything", "books.json"),
        ("librarything", "LibraryThing"),
    ],
)
def test_export_format_is_told_from_the_header_not_the_name(runner, client, tmp_path, export, name):
    path, expected, skipped_line = EXPORTS[export]
    renamed = tmp_path / name
    renamed.write_bytes(path.read_bytes())
    result = load(runner, renamed)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == expected
    line_report(result.output, skipped_line)
    assert export in result.output.lower()


def test_librarything_after_goodreads_updates_the_same_books(runner, client):
    """Dune and The Hobbit are in both: the ISBN-10 of one is the ISBN-13 of the other, and
    "Herbert, Frank" / "Tolkien, J. R. R." are the same authors as Goodreads' "Frank Herbert" and
    "J.R.R. Tolkien", so they are updated, not refused as another author's ISBN."""
    assert load(runner, GOODREADS).exit_code == 0
    result = load(runner, LIBRARYTHING)
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 4, "updated": 1, "unchanged": 2, "skipped": 0}
    books = by_title(client)
    assert len(books) == 12
    assert books["The Hobbit"]["genre"] == "Fantasy"
    assert books["Dune"]["isbn"] == "9780441172719"  # the same ISBN in its other form: kept as it was


def test_goodreads_export_into_the_sample_catalogue(seeded_app):
    """Goodreads' way of writing titles ("(Series, #1)") and authors ("J.R.R.") meets the catalogue's."""
    result = seeded_app.test_cli_runner().invoke(args=["load-books", str(GOODREADS)])
    assert result.exit_code == 0, result.output
    assert counts(result.output)["created"] == 2  # Project Hail Mary, The Name of the Wind; six are in it
    assert counts(result.output)["skipped"] == 0
    assert "already exists" not in result.output
    assert catalogue(seeded_app.test_client())["total"] == 62


def test_goodreads_header_without_rows_is_read(runner, client, tmp_path):
    header = GOODREADS.read_text(encoding="utf-8-sig").splitlines()[0]
    result = load(runner, write(tmp_path, "goodreads.csv", header + "\n"))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0}


@pytest.mark.parametrize(
    "text",
    ["name,writer\nDune,Frank Herbert\n", "Book Id\tName\tAuthor\n1\tDune\tHerbert, Frank\n", "", "\n\n"],
    ids=["unknown-csv", "unknown-tsv", "empty", "blank-lines"],
)
def test_table_with_an_unknown_header_exits_non_zero(runner, client, tmp_path, text):
    result = load(runner, write(tmp_path, "books.csv", text))
    assert result.exit_code != 0, result.output
    assert "header" in result.output.lower()
    assert catalogue(client)["total"] == 0


def test_csv_lines_count_blank_lines_and_crlf(runner, client, tmp_path):
    rows = [CSV_HEADER, csv_line(DUNE), "", csv_line({**HOBBIT, "isbn": "9780547928228"}), csv_line(HOBBIT)]
    path = tmp_path / "books.csv"
    path.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    result = load(runner, path)
    assert result.exit_code == 0, result.output
    assert counts(result.output, "merged") == {"created": 2, "updated": 0, "unchanged": 0, "skipped": 0, "merged": 1}
    assert "isbn dropped" in line_report(result.output, 4).lower()
    assert "merged with line 4" in line_report(result.output, 5).lower()


def test_our_csv_as_tsv_and_in_latin_1(runner, client, tmp_path):
    book = {**DUNE, "title": "Cien años de soledad", "author": "Gabriel García Márquez", "isbn": "8497592204"}
    text = "\n".join([CSV_HEADER.replace(",", "\t"), "\t".join(str(book[k]) for k in DUNE)]) + "\n"
    path = tmp_path / "books.txt"
    path.write_bytes(text.encode("latin-1"))
    result = load(runner, path)
    assert result.exit_code == 0, result.output
    assert by_title(client) == {book["title"]: book}


# -- the progress bar ----------------------------------------------------------------------------


class Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_only_for_a_large_file_on_a_terminal():
    assert loader.wants_progress(loader.PROGRESS_MIN_ROWS + 1, Terminal(True))
    assert not loader.wants_progress(loader.PROGRESS_MIN_ROWS, Terminal(True))
    assert not loader.wants_progress(loader.PROGRESS_MIN_ROWS + 1, Terminal(False))
    assert not loader.wants_progress(loader.PROGRESS_MIN_ROWS + 1, None)


def large_csv(tmp_path: Path, count: int) -> Path:
    books = [{**DUNE, "title": f"Book {n}", "isbn": ""} for n in range(count)]
    return write(tmp_path, "large.csv", "\n".join([CSV_HEADER, *map(csv_line, books)]) + "\n")


def test_no_progress_bar_in_a_pipe(runner, client, tmp_path):
    result = load(runner, large_csv(tmp_path, 1001))
    assert result.exit_code == 0, result.output
    assert counts(result.output)["created"] == 1001
    assert result.output.count("\n") == 1, result.output  # the summary, nothing else


def test_progress_bar_counts_every_row(runner, client, tmp_path, monkeypatch):
    bars: list[Any] = []
    real = click.progressbar

    def recording(*args: Any, **kwargs: Any) -> Any:
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(loader, "wants_progress", lambda count, stream: count > 1000)  # as on a terminal
    monkeypatch.setattr(click, "progressbar", recording)
    result = load(runner, large_csv(tmp_path, 1001), "--dry-run")
    assert result.exit_code == 0, result.output
    assert [(bar.length, bar.pos) for bar in bars] == [(1001, 1001)]
    assert counts(result.output)["created"] == 1001
    assert catalogue(client)["total"] == 0


# -- how export values are read ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("Herbert, Frank", "Frank Herbert"),
        ("García Márquez, Gabriel", "Gabriel García Márquez"),
        ("Vonnegut, Kurt, Jr.", "Kurt Vonnegut Jr."),
        ("Homer", "Homer"),
        ("Tolkien, J.R.R.", "J. R. R. Tolkien"),
        ("Plato,", "Plato"),
    ],
)
def test_librarything_author(written, read):
    assert loader._author(loader._first_last(written)) == read


@pytest.mark.parametrize(
    ("publication", "publisher"),
    [
        ("Ace Books (1990), Edition: Reissue, Mass Market Paperback, 544 pages", "Ace Books"),
        ("Farrar, Straus and Giroux (2005), Edition: 1st, 320 pages", "Farrar, Straus and Giroux"),
        ("Gallimard (c1999)", "Gallimard"),
        ("Penguin Classics, Paperback", "Penguin Classics"),
        ("", ""),
    ],
)
def test_librarything_publisher(publication, publisher):
    assert loader._publisher(publication) == publisher


@pytest.mark.parametrize(
    ("isbn", "isbns", "read"),
    [
        ("[0441172717]", "0441172717, 9780441172719", ("0441172717", "9780441172719")),
        ("[0441172718]", "9780441172719", ("0441172718", "9780441172719")),  # the importer takes the first valid
        ("", "9780441172719, 0441172717", ("9780441172719", "0441172717")),
        ("", "", ()),
    ],
)
def test_librarything_isbn(isbn, isbns, read):
    assert loader._librarything_isbn(isbn, isbns) == read


@pytest.mark.parametrize(
    ("cell", "read"), [('="0441172717"', "0441172717"), ('=""', ""), ("0441172717", "0441172717"), ("", "")]
)
def test_goodreads_isbn(cell, read):
    assert loader._unformula(cell) == read


@pytest.mark.parametrize(
    ("date", "year"),
    [
        ("1965", "1965"), ("c1965", "1965"), ("1965-04-01", "1965"), ("", ""),
        ("date?", ""), ("?", ""), ("pas de date", ""), ("aucune date", ""), ("n.d.", ""),
    ],
)  # fmt: skip
def test_librarything_year(date, year):
    assert loader._year(date) == year


# -- what real exports get wrong (issue 13); tests/samples/README.md says where each sample is from --

GOODREADS_QUIRKS = SAMPLES / "goodreads_quirks.csv"
LIBRARYTHING_QUIRKS = SAMPLES / "librarything_quirks.tsv"
ALL_SAMPLES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".csv", ".tsv"))


def books_of(client) -> list[dict[str, Any]]:
    books = client.get("/books?limit=100&sort_by=id").get_json()["books"]
    return [{k: b[k] for k in ("id", *DUNE)} for b in books]


def one(client, **match: Any) -> dict[str, Any]:
    found = [b for b in books_of(client) if all(b[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, books_of(client))
    return found[0]


def settled_files(app, data_dir: Path) -> dict[str, bytes]:
    """The data directory's files once the background checkpoint has written what it will."""
    app.extensions["library_store"].maintain(force=True)
    return data_files(data_dir)


def test_stray_bytes_in_one_field_garble_no_other(runner, client):
    raw = LIBRARYTHING_QUIRKS.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # UTF-8 but for one byte in Subjects
    assert "Les Bébés de la consigne automatique".encode() in raw
    result = load(runner, LIBRARYTHING_QUIRKS)
    assert result.exit_code == 0, result.output
    book = one(client, title="Les Bébés de la consigne automatique")
    assert book["author"] == "Ryû Murakami"
    assert all("Ã" not in str(value) for b in books_of(client) for value in b.values())


def test_a_file_wholly_in_latin_1_is_still_read_as_latin_1(tmp_path):
    path = tmp_path / "books.csv"
    path.write_bytes("title,author\nCien años de soledad,Gabriel García Márquez\n".encode("cp1252"))
    assert loader.read_rows(path) == [(2, {"title": "Cien años de soledad", "author": "Gabriel García Márquez"})]


def test_librarything_unknown_dates_are_no_year_and_an_editor_stands_for_the_author(runner, client):
    result = load(runner, LIBRARYTHING_QUIRKS)
    assert result.exit_code == 0, result.output
    assert counts(result.output, "warnings") == {
        "created": 4, "updated": 0, "unchanged": 0, "skipped": 1, "warnings": 0,
    }  # fmt: skip
    for title in ("Les Bébés de la consigne automatique", "Nouvelles", "Contes", "Atlas des oiseaux de France"):
        assert one(client, title=title)["publication_year"] is None  # date?, aucune date, ?, pas de date
    assert (
        one(client, title="Atlas des oiseaux de France")["author"] == "Claire Martin"
    )  # the editor, not the illustrator
    assert "skipped: author: the row names no author (nor an editor)" in line_report(result.output, 6).lower()


def test_goodreads_takes_the_first_valid_isbn_and_year(runner, client):
    result = load(runner, GOODREADS_QUIRKS)
    assert result.exit_code == 0, result.output
    assert counts(result.output, "warnings")["warnings"] == 0  # every field had a valid value somewhere
    assert one(client, title="Slaughterhouse-Five")["isbn"] == "0385333846"  # ISBN13 is an EAN: 0785342510591
    assert one(client, title="Tales from the Loop")["isbn"] == "178698265X"  # ISBN13 cut short: 978178698265
    assert one(client, title="The Hate U Give")["publication_year"] == 2017  # Original Publication Year 32767


def test_an_invalid_value_everywhere_is_dropped_with_a_warning_and_the_book_kept(runner, client, tmp_path):
    header, row = GOODREADS_QUIRKS.read_text(encoding="utf-8").splitlines()[:2]
    path = write(tmp_path, "gr.csv", f"{header}\n{row.replace('0385333846', '0385333847')}\n")
    result = load(runner, path)
    assert result.exit_code == 0, result.output
    assert counts(result.output, "warnings") == {
        "created": 1, "updated": 0, "unchanged": 0, "skipped": 0, "warnings": 1,
    }  # fmt: skip
    report = line_report(result.output, 2)
    assert "warning: isbn dropped: '0785342510591' (an EAN, not an ISBN" in report
    assert "'0385333847' (Not a valid ISBN-10: the check digit is wrong)" in report
    assert one(client, title="Slaughterhouse-Five")["isbn"] is None


def test_rows_with_different_isbns_are_never_merged(runner, client):
    result = load(runner, GOODREADS_QUIRKS)
    assert result.exit_code == 0, result.output
    volumes = [b for b in books_of(client) if b["title"] == "Histoire de la Révolution française"]
    assert sorted(b["isbn"] for b in volumes) == ["0140449132", "0140449140", "0140449159"]
    editions = [b for b in books_of(client) if b["title"] == "I Am Legend"]
    assert sorted((b["publisher"], b["isbn"]) for b in editions) == [
        ("Gollancz", "9780575094161"), ("Tor", "9780765357151"),
    ]  # fmt: skip


def test_the_same_isbn_under_another_spelling_of_the_author_is_the_same_book(runner, client, tmp_path):
    result = load(runner, GOODREADS_QUIRKS)
    assert result.exit_code == 0, result.output
    # Line 12 has Slaughterhouse-Five's ISBN-13 and "Kurt Vonnegut" for line 2's "Kurt Vonnegut Jr."
    assert "merged with line 2, book 1 ('Slaughterhouse-Five'); filled genre" in line_report(result.output, 12)
    assert one(client, title="Slaughterhouse-Five")["author"] == "Kurt Vonnegut Jr."  # the first row's
    enriquez = one(client, title="Things We Lost in the Fire")
    text = GOODREADS_QUIRKS.read_text(encoding="utf-8").replace("Enríquez", "Enriquez")
    result = load(runner, write(tmp_path, "again.csv", text))
    assert result.exit_code == 0, result.output
    assert "already exists" not in result.output.lower() and counts(result.output)["created"] == 0
    assert f"updated book {enriquez['id']} ('Things We Lost in the Fire'): author" in line_report(result.output, 10)
    # POST /books compares authors the same way, and still refuses another author's ISBN
    body = {"title": "Things We Lost in the Fire", "author": "MARIANA ENRÍQUEZ", "isbn": "1524761672"}
    assert client.post("/books", json=body).status_code == 200
    assert client.post("/books", json={**body, "author": "Mariana Enriquez Jr."}).status_code == 200
    assert client.post("/books", json={**body, "author": "Someone Else"}).status_code == 409


def test_an_isbn_with_another_author_and_title_is_dropped_not_the_row(runner, client, tmp_path):
    assert load(runner, GOODREADS_QUIRKS).exit_code == 0
    path = write(tmp_path, "books.csv", f"{CSV_HEADER}\nAnother Book,Someone Else,,,2001,0385333846\n")
    result = load(runner, path)
    assert "isbn 0385333846 dropped: it is book 1's ('Slaughterhouse-Five' by 'Kurt Vonnegut Jr.')" in result.output
    assert one(client, title="Another Book")["isbn"] is None


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_a_second_import_writes_nothing(app, runner, data_dir, name):
    first = load(runner, SAMPLES / name)
    assert first.exit_code == 0, first.output
    before = settled_files(app, data_dir)
    result = load(runner, SAMPLES / name)
    assert result.exit_code == 0, result.output
    again = counts(result.output, "merged")
    assert again["created"] == again["updated"] == 0
    assert again["unchanged"] + again["merged"] == sum(counts(first.output, "merged")[k] for k in ("created", "merged"))
    assert settled_files(app, data_dir) == before  # the journal included: not one line, no updated_at


def test_the_report_names_every_row_that_did_not_simply_create_a_book(runner, client):
    load(runner, GOODREADS_QUIRKS)
    result = load(runner, GOODREADS_QUIRKS)
    lines = result.output.strip().splitlines()
    assert lines == [
        "line 12: merged with line 2, book 1 ('Slaughterhouse-Five')",
        "unchanged (each the same as its book): lines 2-11",
        "created 0, updated 0, unchanged 10, skipped 0, merged 1, warnings 0 "
        "(of 11 rows in goodreads_quirks.csv, read as Goodreads CSV export)",
    ]


def test_genres_only_from_subject_shelves_and_entities_decoded(runner, client):
    assert load(runner, GOODREADS_QUIRKS).exit_code == 0
    assert load(runner, LIBRARYTHING_QUIRKS).exit_code == 0
    fire = one(client, title="Fire & Blood")  # "Fire &amp; Blood (A Targaryen History, #1)"
    assert (fire["publisher"], fire["genre"]) == ("Simon & Schuster", "Fantasy")  # after ab-meta-undetermined
    assert one(client, title="Things We Lost in the Fire")["genre"] == "Short Stories"  # after Owned To Read, A_lire
    assert one(client, title="Les Bébés de la consigne automatique")["genre"] == "Roman Japonais"  # after A_lire
    assert one(client, title="Atlas des oiseaux de France")["genre"] == "Ornithologie"
    assert one(client, title="Atlas des oiseaux de France")["publisher"] == "Delachaux & Niestlé"
    assert one(client, title="Nouvelles")["genre"] is None  # only "Owned To Read"


@pytest.mark.parametrize(
    "shelf",
    [
        "to-read",
        "currently-reading",
        "read",
        "owned",
        "wish-list",
        "owned-to-read",
        "A_lire",
        "Ab Meta Undetermined",
        "books-i-own",
        "kindle",
        "did-not-finish",
        # where a book came from, as real exports (BH-BH/goodreads_export) shelve it
        "Books From Alex",
        "alex-borrowing",
        "couldnt-hack",
    ],
)
def test_reading_status_and_ownership_shelves_are_no_subject(shelf):
    assert not loader.is_subject(shelf)


@pytest.mark.parametrize("shelf", ["science-fiction", "fantasy", "Roman japonais", "short-stories", "history"])
def test_subject_shelves(shelf):
    assert loader.is_subject(shelf)


def test_real_goodreads_exports_as_people_keep_them(runner, client):
    aligned = load(runner, SAMPLES / "goodreads_aligned_columns.csv")  # spaces after every comma
    assert counts(aligned.output, "warnings") == {
        "created": 6, "updated": 0, "unchanged": 0, "skipped": 0, "warnings": 0,
    }  # fmt: skip
    raintree = one(client, title="Raintree County")
    assert (raintree["author"], raintree["isbn"], raintree["publication_year"]) == (
        "Ross Lockridge Jr.", "9780140236668", 1948,
    )  # fmt: skip
    assert one(client, title="White Fang")["isbn"] is None  # ="" in its aligned form
    assert one(client, title="Theo of Golden")["isbn"] == "9798988702900"
    sheet = load(runner, SAMPLES / "goodreads_spreadsheet_isbns.csv")  # ISBN13 9.78E+12, zeros dropped
    assert counts(sheet.output, "warnings")["warnings"] == 0
    assert one(client, title="Magpie Murders")["isbn"] == "0062645226"
    assert one(client, title="The Color of Magic")["isbn"] == "0060855924"


def test_real_librarything_export_with_a_book_entered_twice(runner, client):
    result = load(runner, SAMPLES / "librarything_editor_twice.tsv")
    assert counts(result.output, "merged") == {"created": 4, "updated": 0, "unchanged": 0, "skipped": 0, "merged": 1}
    assert "line 6: merged with line 5" in result.output
    assert one(client, title="Comedy of Desire")["publication_year"] is None


# -- removing the sample catalogue ---------------------------------------------------------------


def test_remove_sample_keeps_what_someone_touched(seeded_app, tmp_path):
    from tests.conftest import client_as

    librarian = client_as(seeded_app, "librarian")
    books = librarian.get("/books?limit=100&sort_by=id").get_json()["books"]
    edited, borrowed = books[0], books[1]
    assert librarian.patch(f"/books/{edited['id']}", json={"genre": "Mine"}).status_code == 200
    assert librarian.post(f"/books/{borrowed['id']}/borrow", json={"days": 14}).status_code == 201
    assert librarian.post(f"/books/{borrowed['id']}/return").status_code == 200  # returned: still borrowed once
    runner = seeded_app.test_cli_runner()
    dry = runner.invoke(args=["remove-sample", "--dry-run"])
    assert "would have removed 58 sample books" in dry.output
    assert librarian.get("/books").get_json()["total"] == 60
    result = runner.invoke(args=["load-books", "--replace-sample", str(GOODREADS_QUIRKS)])
    assert result.exit_code == 0, result.output
    assert "removed 58 untouched sample books" in result.output
    body = librarian.get("/books?limit=100").get_json()
    assert {edited["title"], borrowed["title"], "Slaughterhouse-Five"} <= {b["title"] for b in body["books"]}
    assert body["total"] == 2 + 10  # the two touched, the ten books of the file
    assert "removed 0 sample books" in runner.invoke(args=["remove-sample"]).output
