"""Every everyday job on the page, walked end to end in a real browser as the role that does it.

Each test signs in through the page and does its job through the page only; the API is called only
to set up what the job starts from (a loan made a month ago, a book already out). A screenshot of
each job is written to ``LIBRARY_SCREENSHOTS`` when set (else the test's tmp_path), and axe-core
checks every view for serious or critical violations.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.browsers import (
    PASSWORD,
    call,
    launched,
    new_tab,
    person,
    screenshot_dir,
    serious_violations,
)
from tests.servers import ROOT, gunicorn_server, librarian

LIVE_TIMEOUT_MS = 5_000
SAMPLES = ROOT / "tests" / "samples"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """gunicorn as deployed (two workers) with the sample catalogue: its port and data directory."""
    data_dir = tmp_path_factory.mktemp("jobs") / "data"
    with gunicorn_server(data_dir, workers=2, LIBRARY_SEED_FILE=str(ROOT / "books.json")) as port:
        yield port, data_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as chromium:
        yield chromium


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshot_dir(tmp_path)


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    with new_tab(browser, tmp_path / "page.png") as tab:
        yield tab


# -- helpers -------------------------------------------------------------------------------------


def url(port: int, route: str = "/") -> str:
    return f"http://127.0.0.1:{port}/#{route}"


def sign_in(page: Page, port: int, who: dict[str, Any]) -> None:
    """Sign in through the page's form, as a person would."""
    page.goto(url(port, "/signin"))
    page.get_by_label("Email").fill(who["email"])
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in")).to_contain_text(f"{who['first_name']} {who['last_name']}")


def as_librarian(port: int, method: str, path: str, body: Any = None) -> Any:
    return call(port, method, path, body, librarian[port])


def new_book(port: int, title: str | None = None) -> dict[str, Any]:
    title = title or f"Book {uuid.uuid4().hex[:8]}"
    return as_librarian(port, "POST", "/books", {"title": title, "author": "Page Tester", "genre": "Testing"})


def lend(port: int, book_id: int, member_id: int, **extra: Any) -> dict[str, Any]:
    return as_librarian(port, "POST", f"/books/{book_id}/borrow", {"member_id": member_id, **extra})


def png(width: int = 120, height: int = 180, rgb: tuple[int, int, int] = (200, 90, 40)) -> bytes:
    """A real PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress((b"\x00" + bytes(rgb) * width) * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def check_view(page: Page, shots: Path | None = None, name: str = "") -> None:
    """No serious or critical axe-core violation on the view; its screenshot when asked."""
    problems = serious_violations(page)
    assert not problems, f"accessibility of {page.url}: {problems}"
    if shots is not None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def route_exists(port: int, method: str, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=librarian[port])
        response = conn.getresponse()
        response.read()
        return response.status != 404
    finally:
        conn.close()


def days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- signing in ----------------------------------------------------------------------------------


def test_a_member_registers_signs_in_and_out_on_the_page(server, page, shots):
    port, data_dir = server
    page.goto(url(port))
    expect(page.get_by_test_id("sign-in-link")).to_be_visible()
    page.get_by_role("link", name="Register").click()
    expect(page.get_by_role("heading", name="Register")).to_be_focused()
    check_view(page)

    # A refused registration says why, next to the field.
    page.get_by_label("First name").fill("Grace")
    page.get_by_label("Last name").fill("Hopper")
    page.get_by_label("Email").fill("not an email")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_test_id("error-email")).to_be_visible()
    expect(page.get_by_test_id("error-password")).to_contain_text("characters")
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")

    email = f"grace-{uuid.uuid4().hex[:6]}@example.org"
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_test_id("signed-in")).to_have_text("Signed in as Grace Hopper (member)")
    expect(page.get_by_role("heading", name="My loans")).to_be_visible()
    # the token is kept for this tab's session only, never in a cookie
    assert page.evaluate("sessionStorage.getItem('library.token')")
    assert page.context.cookies() == []

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("sign-in-link")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('library.token')") is None

    # A wrong password: the server's words.
    page.get_by_test_id("sign-in-link").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("wrong password!")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("form-error")).to_have_text("The email or password is wrong")
    check_view(page, shots, "sign-in")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in")).to_contain_text("Grace Hopper")
    expect(page.get_by_test_id("role")).to_have_text("member")
    # a member's menu has no desk
    expect(page.get_by_role("link", name="Add a book")).to_have_count(0)
    expect(page.get_by_role("link", name="My loans")).to_be_visible()


# -- the catalogue and a book ----------------------------------------------------------------------


def test_the_address_bar_keeps_the_search_the_page_and_the_open_book(server, page, shots):
    port, _ = server
    page.goto(url(port))
    expect(page.get_by_test_id("total")).to_have_text(re.compile(r"\d+"))
    page.get_by_test_id("search").fill("tolkien")
    expect(page.get_by_test_id("total")).to_have_text("2")
    expect(page).to_have_url(re.compile(r"#/\?q=tolkien$"))
    page.get_by_role("link", name="The Hobbit").click()
    expect(page.get_by_test_id("book-title")).to_have_text("The Hobbit")
    expect(page).to_have_url(re.compile(r"#/book/\d+$"))
    expect(page.get_by_test_id("book-page")).to_contain_text("J. R. R. Tolkien")
    expect(page.get_by_test_id("book-page")).to_contain_text("9780547928227")
    expect(page.get_by_test_id("status")).to_have_text("Available")
    check_view(page, shots, "book")
    # "Skip to the content" takes the focus to the view (and leaves the address alone).
    page.get_by_role("link", name="Skip to the content").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("book-title")).to_be_focused()
    expect(page).to_have_url(re.compile(r"#/book/\d+$"))
    book_address = page.url

    page.go_back()
    expect(page.get_by_test_id("search")).to_have_value("tolkien")
    expect(page.get_by_test_id("total")).to_have_text("2")
    page.go_forward()
    expect(page.get_by_test_id("book-title")).to_have_text("The Hobbit")

    # A shared link opens where it points: a page of a search, and a book.
    with new_tab(page.context.browser, shots / "shared.png") as other:
        other.goto(url(port, "/?sort=author&page=2"))
        expect(other.get_by_text("Page 2 of 6")).to_be_visible()
        expect(other.get_by_label("Sort by")).to_have_value("author")
        other.goto(book_address)
        expect(other.get_by_test_id("book-title")).to_have_text("The Hobbit")
        check_view(other)


def test_a_hostile_title_is_text_and_the_page_has_a_strict_policy(server, page):
    port, _ = server
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    word = f"Xss{uuid.uuid4().hex[:6]}"
    title = f"{word} <img src=x onerror=alert(1)>"
    book = new_book(port, title)

    response = page.goto(url(port, f"/?q={word}"))
    assert response is not None
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "https://openlibrary.org" in directives["connect-src"]
    # The page's files: the right types (nosniff is on), revalidated rather than kept stale.
    for path, kind in (("/static/js/main.js", "text/javascript"), ("/static/app.css", "text/css")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == 200 and answer.getheader("Content-Type", "").startswith(kind)
        assert answer.getheader("Cache-Control") == "no-cache" and answer.getheader("ETag")

    expect(page.get_by_test_id("title")).to_have_text([title])
    page.get_by_test_id("title").click()
    expect(page.get_by_test_id("book-title")).to_have_text(title)
    assert page.locator("img[src=x]").count() == 0
    assert not dialogs

    # The page's own files are the only scripts and styles; an inline one would be refused.
    blocked = page.evaluate(
        """() => new Promise((resolve) => {
            document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective), { once: true });
            const s = document.createElement('script'); s.textContent = 'window.ran = 1'; document.body.append(s);
            setTimeout(() => resolve(null), 2000);
        })"""
    )
    assert blocked and blocked.startswith("script-src")
    assert page.evaluate("window.ran") is None
    as_librarian(port, "DELETE", f"/books/{book['id']}")


# -- a librarian adds, edits and deletes books -----------------------------------------------------


def test_a_librarian_adds_a_book_with_a_cover_by_keyboard_alone(server, page, shots, tmp_path):
    port, data_dir = server
    desk = person(data_dir, "librarian", "Lin", "Brarian")
    sign_in(page, port, desk)
    expect(page.get_by_role("link", name="Add a book")).to_be_visible()
    page.get_by_role("link", name="Add a book").click()
    expect(page.get_by_role("heading", name="Add a book")).to_be_focused()
    check_view(page)

    # Refused: each field's error next to it, and focus on the first.
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("error-title")).to_have_text("Must be 1 to 500 characters.")
    expect(page.get_by_test_id("error-author")).to_be_visible()
    expect(page.get_by_test_id("book-title")).to_be_focused()
    page.get_by_test_id("book-publication_year").fill("3000")
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("error-publication_year")).to_contain_text("Must not be after")

    # By keyboard alone: type into the focused field, Tab to the next, Enter to save.
    cover = tmp_path / "cover.png"
    cover.write_bytes(png())
    title = f"Keyboard Book {uuid.uuid4().hex[:6]}"
    page.get_by_test_id("book-title").focus()
    for text in (title, "Kay Board", "Testing", "Tab Press"):
        page.keyboard.press("Control+A")
        page.keyboard.type(text)
        page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("2021")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "book-cover"
    page.get_by_test_id("book-cover").set_input_files(str(cover))  # the file chooser is the system's
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "save"
    page.keyboard.press("Enter")

    expect(page.get_by_test_id("book-title")).to_have_text(title)
    expect(page.get_by_test_id("notice")).to_have_text(f"Added “{title}”.")
    expect(page.get_by_test_id("book-title")).to_be_focused()
    image = page.locator("img.cover-large")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 120
    expect(page.get_by_test_id("book-page")).to_contain_text("Tab Press")
    check_view(page, shots, "librarian-added-a-book")

    # A document for it, from its page.
    document = tmp_path / "notes.pdf"
    document.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    page.get_by_label("Document", exact=True).set_input_files(str(document))
    page.get_by_test_id("upload-document").click()
    expect(page.get_by_test_id("result")).to_have_text("Document uploaded.")
    expect(page.get_by_role("link", name="Read the document")).to_have_attribute("href", re.compile(r"^/uploads/"))
    page.get_by_label("Document", exact=True).set_input_files(
        str(cover)
    )  # a picture is not a document: the server says so
    page.get_by_test_id("upload-document").click()
    expect(page.get_by_test_id("refusal")).to_contain_text("Upload document: ")

    # Edit it, then delete it.
    page.get_by_test_id("edit").click()
    expect(page.get_by_test_id("book-title")).to_have_value(title)
    page.get_by_test_id("book-genre").fill("Keyboards")
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("book-page")).to_contain_text("Keyboards")
    page.get_by_test_id("delete").click()
    expect(page.get_by_test_id("confirm-delete")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("notice")).to_have_text(f"Deleted “{title}”.")
    expect(page.get_by_test_id("search")).to_be_visible()


def test_adding_by_isbn_fills_the_form_from_open_library_and_works_without_it(server, page, tmp_path):
    port, data_dir = server
    sign_in(page, port, person(data_dir, "librarian"))
    isbn = "9780141439518"
    looked_up: list[str] = []

    def open_library(route: Route) -> None:  # the test answers for Open Library: no network in CI
        looked_up.append(route.request.url)
        found = {
            f"ISBN:{isbn}": {
                "title": "Pride and Prejudice",
                "authors": [{"name": "Jane Austen"}],
                "publish_date": "2003",
                "publishers": [{"name": "Penguin"}],
                "cover": {"large": "https://covers.openlibrary.org/b/id/1-L.jpg"},
            }
        }
        body = json.dumps(found)
        route.fulfill(
            status=200, content_type="application/json", body=body, headers={"Access-Control-Allow-Origin": "*"}
        )

    def cover(route: Route) -> None:
        route.fulfill(
            status=200,
            content_type="image/png",
            body=png(90, 140, (30, 90, 160)),
            headers={"Access-Control-Allow-Origin": "*"},
        )

    page.route("https://openlibrary.org/**", open_library)
    page.route("https://covers.openlibrary.org/**", cover)
    page.goto(url(port, "/add"))
    page.get_by_label("ISBN").fill(isbn)
    page.get_by_label("ISBN").press("Enter")  # looks it up, rather than saving an empty form
    expect(page.get_by_test_id("lookup-result")).to_contain_text("Filled from Open Library")
    expect(page.get_by_test_id("book-title")).to_be_focused()
    expect(page.get_by_test_id("book-title")).to_have_value("Pride and Prejudice")
    expect(page.get_by_test_id("book-author")).to_have_value("Jane Austen")
    expect(page.get_by_test_id("book-publication_year")).to_have_value("2003")
    assert looked_up and f"ISBN%3A{isbn}" in looked_up[0]
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("book-title")).to_have_text("Pride and Prejudice")
    image = page.locator("img.cover-large")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 90  # the cover was fetched and uploaded

    # Open Library unreachable: the page says so, and the book is added all the same.
    page.unroute("https://openlibrary.org/**")
    page.route("https://openlibrary.org/**", lambda route: route.abort("internetdisconnected"))
    page.goto(url(port, "/add"))
    page.get_by_label("ISBN").fill("9780000000002")
    page.get_by_test_id("lookup").click()
    expect(page.get_by_test_id("lookup-result")).to_have_text(
        "Open Library cannot be reached just now; fill the fields by hand."
    )
    page.get_by_test_id("book-title").fill("Offline Entry")
    page.get_by_test_id("book-author").fill("Nobody Online")
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("book-title")).to_have_text("Offline Entry")


# -- a member borrows, renews and returns -----------------------------------------------------------


def test_a_member_borrows_by_keyboard_renews_and_returns(server, page, shots):
    port, data_dir = server
    member = person(data_dir, "member", "Bo", "Rower")
    book = new_book(port, f"Borrowable {uuid.uuid4().hex[:6]}")
    sign_in(page, port, member)
    page.goto(url(port))
    # Keyboard only: search, Tab to the book's link, Enter, type the days, Enter.
    page.get_by_test_id("search").focus()
    page.keyboard.type(book["title"])
    expect(page.get_by_test_id("total")).to_have_text("1")
    link = page.get_by_role("link", name=book["title"])
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == book["title"]:
            break
    expect(link).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("book-title")).to_be_focused()
    page.get_by_label("Days").focus()
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("result")).to_contain_text("Borrowed: due")
    expect(page.get_by_test_id("result")).to_be_focused()
    expect(page.get_by_test_id("status")).to_contain_text("Checked out, due")
    expect(page.get_by_test_id("my-loan")).to_contain_text("You have this book")
    check_view(page, shots, "member-borrowed")

    page.get_by_role("link", name="My loans").click()
    loan = page.get_by_test_id("loan")
    expect(loan).to_have_count(1)
    expect(loan).to_contain_text(book["title"])
    expect(loan.get_by_test_id("fine")).to_have_text("0.00")
    due_before = loan.locator("td").nth(1).inner_text()
    loan.get_by_test_id("renew").click()
    expect(page.get_by_test_id("result")).to_contain_text("Renewed: now due")
    expect(loan.locator("td").nth(1)).not_to_have_text(due_before)
    check_view(page, shots, "my-loans")
    loan.get_by_test_id("return").click()
    expect(page.get_by_test_id("result")).to_have_text("Returned.")
    expect(page.get_by_test_id("no-loans")).to_be_visible()
    expect(page.get_by_test_id("fines-due")).to_have_text("Fines due: 0.00")


def test_a_hold_is_queued_and_the_returned_book_kept_for_the_holder(server, browser, shots):
    port, data_dir = server
    first, second = person(data_dir, "member", "First", "Reader"), person(data_dir, "member", "Second", "Reader")
    book = new_book(port, f"Wanted {uuid.uuid4().hex[:6]}")
    lend(port, book["id"], first["id"])  # set-up: the book is out with the first reader

    with new_tab(browser, shots / "holder-end.png") as holder, new_tab(browser, shots / "borrower-end.png") as borrower:
        sign_in(holder, port, second)
        holder.goto(url(port, f"/book/{book['id']}"))
        expect(holder.get_by_test_id("status")).to_contain_text("Checked out")
        expect(holder.get_by_test_id("borrow")).to_have_count(0)
        expect(holder.get_by_test_id("waiting")).to_have_text("0 holds in the queue")
        holder.get_by_test_id("place-hold").click()
        expect(holder.get_by_test_id("result")).to_have_text("Hold placed: number 1 in the queue.")
        expect(holder.get_by_test_id("my-hold")).to_have_text("You are number 1 in the queue.")
        expect(holder.get_by_test_id("waiting")).to_have_text("1 hold in the queue")  # a member sees the count

        # The borrower may not renew while someone waits: the server's rule, shown where they clicked.
        sign_in(borrower, port, first)
        borrower.goto(url(port, "/me"))
        borrower.get_by_test_id("loan").get_by_test_id("renew").click()
        expect(borrower.get_by_test_id("refusal")).to_contain_text(re.compile(r"^Renew: .*(wait|hold)", re.I))
        expect(borrower.get_by_test_id("refusal")).to_be_focused()
        borrower.get_by_test_id("loan").get_by_test_id("return").click()
        expect(borrower.get_by_test_id("result")).to_have_text("Returned.")

        # The holder's page shows it kept for them, live; then they borrow it.
        holder.get_by_role("link", name="My loans").click()
        expect(holder.get_by_test_id("hold-state")).to_contain_text("Kept for you until", timeout=LIVE_TIMEOUT_MS)
        check_view(holder, shots, "hold-kept")
        holder.get_by_test_id("hold").get_by_role("link").click()
        expect(holder.get_by_test_id("status")).to_have_text("On hold")
        expect(holder.get_by_test_id("my-hold")).to_contain_text("Kept for you until")
        holder.get_by_test_id("borrow").click()
        expect(holder.get_by_test_id("result")).to_contain_text("Borrowed: due")

        # Now the first reader waits for it, and changes their mind.
        borrower.goto(url(port, f"/book/{book['id']}"))
        borrower.get_by_test_id("place-hold").click()
        expect(borrower.get_by_test_id("my-hold")).to_have_text("You are number 1 in the queue.")
        borrower.get_by_role("link", name="My loans").click()
        expect(borrower.get_by_test_id("hold-state")).to_have_text("Number 1 in the queue")
        borrower.get_by_test_id("hold").get_by_test_id("cancel-hold").click()
        expect(borrower.get_by_test_id("result")).to_have_text("Hold cancelled.")
        expect(borrower.get_by_test_id("hold")).to_have_count(0)


# -- the desk: fines, members, roles, live -------------------------------------------------------


def test_a_late_return_shows_its_fine_and_a_payment_clears_it(server, browser, shots):
    port, data_dir = server
    member = person(data_dir, "member", "Late", "Larry")
    desk = person(data_dir, "librarian", "Desk", "Keeper")
    book = new_book(port, f"Late {uuid.uuid4().hex[:6]}")
    # set-up: a 7-day loan made 20 days ago, 13 days late (0.50 a day)
    lend(port, book["id"], member["id"], days=7, borrowed_at=days_ago(20))

    with new_tab(browser, shots / "late-member-end.png") as mine, new_tab(browser, shots / "late-desk-end.png") as page:
        sign_in(mine, port, member)
        mine.goto(url(port, "/me"))
        expect(mine.get_by_test_id("loan")).to_contain_text("overdue")
        expect(mine.get_by_test_id("loan").get_by_test_id("fine")).to_have_text("6.50")

        sign_in(page, port, desk)
        page.get_by_role("link", name="Overdue").click()
        expect(page.get_by_role("heading", name="Overdue loans")).to_be_visible()
        expect(page.get_by_label("Status")).to_have_value("overdue")
        page.get_by_label("Status").focus()
        page.get_by_label("Status").select_option("active")  # a filter is kept in the address bar, and the focus on it
        expect(page).to_have_url(re.compile(r"#/loans\?status=active$"))
        expect(page.get_by_label("Status")).to_be_focused()
        page.go_back()
        expect(page.get_by_label("Status")).to_have_value("overdue")
        overdue = page.get_by_test_id("loan").filter(has_text=book["title"])
        expect(overdue).to_contain_text("6.50")
        check_view(page, shots, "overdue")
        overdue.get_by_role("link", name="Late Larry").click()
        expect(page.get_by_test_id("member-name")).to_have_text("Late Larry")
        page.get_by_test_id("loan").get_by_test_id("take-back").click()
        expect(page.get_by_test_id("result")).to_have_text("Taken back with a fine of 6.50.")
        expect(page.get_by_test_id("fines-due")).to_have_text("Fines due: 6.50")
        check_view(page, shots, "member-with-fine")

        # The member's page shows the return and the fine owed, live.
        expect(mine.get_by_test_id("no-loans")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        mine.reload()
        expect(mine.get_by_test_id("fines-due")).to_have_text("Fines due: 6.50")

        # Too much is refused with the server's reason; the right amount clears it.
        page.get_by_label("Amount paid").fill("100")
        page.get_by_test_id("record-payment").click()
        expect(page.get_by_test_id("refusal")).to_have_text(
            "Record payment: The member owes 6.50; a payment cannot be more than that"
        )
        page.get_by_label("Amount paid").fill("0.001")  # and bad input names its field
        page.get_by_test_id("record-payment").click()
        expect(page.get_by_test_id("refusal")).to_contain_text("(amount: Must be more than 0 with at most 2 decimals.)")
        page.get_by_label("Amount paid").fill("6.50")
        page.get_by_test_id("record-payment").click()
        expect(page.get_by_test_id("result")).to_have_text("Payment of 6.50 recorded; 0.00 still due.")
        expect(page.get_by_test_id("fines-due")).to_have_text("Fines due: 0.00")
        page.screenshot(path=str(shots / "payment-recorded.png"), full_page=True)


def test_a_librarian_enrols_a_member_and_an_admin_changes_a_role(server, browser, shots):
    port, data_dir = server
    desk, admin = person(data_dir, "librarian", "Enid", "Desk"), person(data_dir, "admin", "Ada", "Min")
    promoted = person(data_dir, "member", "Pro", "Moted")

    with new_tab(browser, shots / "enrol-end.png") as page:
        sign_in(page, port, desk)
        page.get_by_role("link", name="Members").click()
        expect(page.get_by_role("heading", name="Members")).to_be_focused()
        page.get_by_test_id("enrol").click()
        expect(page.get_by_test_id("error-email")).to_be_visible()
        page.get_by_label("First name").fill("Walk")
        page.get_by_label("Last name").fill("In")
        page.get_by_label("Email").fill(f"walk-in-{uuid.uuid4().hex[:6]}@example.org")
        page.get_by_test_id("enrol").click()
        expect(page.get_by_test_id("member-name")).to_have_text("Walk In")
        expect(page.get_by_test_id("notice")).to_have_text("Enrolled Walk In.")
        # a librarian cannot change roles: no control for it
        expect(page.get_by_test_id("change-role")).to_have_count(0)
        page.get_by_role("link", name="‹ Members").click()
        page.get_by_label("Find a member").fill("Walk")
        expect(page.get_by_test_id("member")).to_have_count(1)
        expect(page).to_have_url(re.compile(r"#/members\?q=Walk$"))
        expect(page.get_by_label("Find a member")).to_be_focused()  # typing goes on where it was
        check_view(page, shots, "members")

    with new_tab(browser, shots / "role-end.png") as page:
        sign_in(page, port, admin)
        expect(page.get_by_test_id("role")).to_have_text("admin")
        page.goto(url(port, f"/members?q={promoted['email']}"))
        page.get_by_role("link", name="Pro Moted").click()
        expect(page.get_by_test_id("member-role")).to_have_text("member")
        page.get_by_label("Role", exact=True).select_option("librarian")
        page.get_by_test_id("change-role").click()
        expect(page.get_by_test_id("result")).to_have_text("Pro Moted is now librarian.")
        expect(page.get_by_test_id("member-role")).to_have_text("librarian")
        check_view(page, shots, "role-changed")

    with new_tab(browser, shots / "promoted-end.png") as page:
        sign_in(page, port, promoted)
        expect(page.get_by_test_id("role")).to_have_text("librarian")
        expect(page.get_by_role("link", name="Add a book")).to_be_visible()


def test_a_loan_made_at_the_desk_shows_live_on_the_members_page(server, browser, shots):
    port, data_dir = server
    member, desk = person(data_dir, "member", "Live", "Watcher"), person(data_dir, "librarian", "Desk", "Lender")
    book = new_book(port, f"Lent live {uuid.uuid4().hex[:6]}")

    with new_tab(browser, shots / "live-member-end.png") as mine, new_tab(browser, shots / "live-desk-end.png") as page:
        sign_in(mine, port, member)
        mine.goto(url(port, "/me"))
        expect(mine.get_by_test_id("no-loans")).to_be_visible()
        expect(mine.get_by_test_id("connection")).to_have_text("live")

        sign_in(page, port, desk)
        page.goto(url(port, f"/book/{book['id']}"))
        page.get_by_label("Member (search)").fill(member["email"])
        expect(page.get_by_test_id("member-choice")).to_contain_text("Live Watcher")
        page.get_by_test_id("lend").click()
        expect(page.get_by_test_id("result")).to_contain_text("Lent to Live Watcher, due")
        expect(page.get_by_test_id("on-loan-to")).to_contain_text("On loan to Live Watcher, due")
        check_view(page, shots, "desk-lent")

        loan = mine.get_by_test_id("loan")
        expect(loan).to_contain_text(book["title"], timeout=LIVE_TIMEOUT_MS)
        mine.screenshot(path=str(shots / "live-member-sees-loan.png"), full_page=True)

        page.get_by_test_id("take-back").click()
        expect(page.get_by_test_id("result")).to_have_text("Taken back from Live Watcher.")
        expect(mine.get_by_test_id("no-loans")).to_be_visible(timeout=LIVE_TIMEOUT_MS)


# -- import and the overview (routes of this release's server side) ---------------------------------


def test_a_librarian_imports_a_goodreads_export_and_sees_the_report(server, page, shots):
    port, data_dir = server
    if not route_exists(port, "POST", "/imports"):
        pytest.skip("this server has no POST /imports yet")
    sign_in(page, port, person(data_dir, "librarian", "Imogen", "Port"))
    page.get_by_role("link", name="Import").click()
    expect(page.get_by_role("heading", name="Import books")).to_be_focused()
    check_view(page)

    # Only checked first: the report, and nothing changed.
    export = SAMPLES / "goodreads_library_export.csv"
    page.get_by_label("Export file").set_input_files(str(export))
    page.get_by_label("Only check it (change nothing)").check()
    page.get_by_test_id("import").click()
    report = page.get_by_test_id("import-report")
    expect(report.get_by_role("heading")).to_contain_text("Checked goodreads_library_export.csv")
    expect(report.get_by_role("heading")).to_be_focused()
    created = int(report.get_by_test_id("count-created").locator("strong").inner_text())
    assert created > 0

    page.get_by_label("Only check it (change nothing)").uncheck()
    page.get_by_test_id("import").click()
    expect(report.get_by_role("heading")).to_contain_text("Imported goodreads_library_export.csv (")
    expect(report.get_by_test_id("count-created").locator("strong")).to_have_text(str(created))
    for name in ("updated", "unchanged", "skipped", "warnings"):
        expect(report.get_by_test_id(f"count-{name}")).to_be_visible()
    check_view(page, shots, "import-report")

    # Again: nothing new, and an unreadable file is refused with the server's reason.
    page.get_by_test_id("import").click()
    expect(report.get_by_test_id("count-created").locator("strong")).to_have_text("0")
    unreadable = shots / "not-an-export.csv"
    unreadable.write_bytes(b"\x00\x01\x02 not a catalogue")
    page.get_by_label("Export file").set_input_files(str(unreadable))
    page.get_by_test_id("import").click()
    expect(page.get_by_test_id("import-error")).not_to_be_empty()


def test_the_overview_charts_loans_and_lists_what_is_overdue(server, page, shots):
    port, data_dir = server
    if not route_exists(port, "GET", "/stats"):
        pytest.skip("this server has no GET /stats yet")
    reader = person(data_dir, "member", "Chart", "Reader")
    book = new_book(port, f"Charted {uuid.uuid4().hex[:6]}")
    lend(port, book["id"], reader["id"], days=3, borrowed_at=days_ago(10))
    sign_in(page, port, person(data_dir, "librarian", "Ove", "Rview"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_test_id("chart-loans-per-week").locator("rect")).to_have_count(12)
    expect(page.get_by_test_id("chart-most-borrowed")).to_be_visible()
    expect(page.get_by_test_id("overdue").filter(has_text=book["title"])).to_contain_text("Chart Reader")
    check_view(page, shots, "overview")


# -- every view: accessible, and readable on a phone ------------------------------------------------


def test_every_view_has_no_serious_accessibility_violation_and_fits_a_phone(server, browser, shots):
    port, data_dir = server
    admin = person(data_dir, "admin", "Axe", "Checker")
    member = person(data_dir, "member", "Phone", "Reader")
    book = new_book(port, f"Viewed {uuid.uuid4().hex[:6]}")
    lend(port, book["id"], member["id"])
    views = [
        "/",
        f"/book/{book['id']}",
        "/me",
        "/add",
        f"/book/{book['id']}/edit",
        "/members",
        f"/members/{member['id']}",
        "/loans",
        "/loans?status=overdue",
        "/holds",
        "/overview",
        "/import",
    ]
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    for size, options in (("desktop", {}), ("phone", phone)):
        with new_tab(browser, shots / f"views-{size}-end.png", **options) as page:
            page.goto(url(port, "/signin"))
            check_view(page)
            sign_in(page, port, admin)
            for route in views:
                page.goto(url(port, route))
                expect(page.locator("#view h2")).to_be_visible()
                expect(page.locator("#view")).not_to_contain_text("Loading…")
                page.wait_for_load_state("networkidle")
                problems = serious_violations(page)
                assert not problems, f"{size} {route}: {problems}"
                if size == "phone":
                    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
                        f"{route} is wider than a phone"
                    )
            page.goto(url(port, f"/book/{book['id']}"))
            expect(page.get_by_test_id("book-title")).to_be_visible()
            page.screenshot(path=str(shots / f"book-{size}.png"), full_page=True)


def test_a_library_closed_to_registration_offers_none(server, page):
    """GET /library (name, registration) decides; here the test answers for it."""
    port, _ = server
    body = '{"name": "The Club Library", "registration": "closed"}'
    page.route(
        re.compile(r"/library$"), lambda route: route.fulfill(status=200, content_type="application/json", body=body)
    )
    page.goto(url(port))
    expect(page.get_by_role("heading", name="The Club Library", level=1)).to_be_visible()
    expect(page).to_have_title("The Club Library")
    expect(page.get_by_test_id("sign-in-link")).to_be_visible()
    expect(page.get_by_role("link", name="Register")).to_have_count(0)
    page.goto(url(port, "/register"))
    expect(page.get_by_text("does not take registrations on the page")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)
