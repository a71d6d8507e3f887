"""The catalogue page in a real headless browser (Playwright driving Debian's chromium).

The page is served by gunicorn as the Procfile runs it, with the 60 sample books. CI installs the
``chromium`` package and the pinned ``playwright``; when either is missing these tests fail (they
never skip), so a broken CI image cannot pass for a working page.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from library import catalogue
from library.records import COLLECTIONS
from storage import JsonStore
from tests.browsers import CHROMIUM, call, launched, missing_requirements, new_tab
from tests.servers import ROOT, gunicorn_server, librarian

LIVE_TIMEOUT_MS = 5_000  # a change must show up within this on the websocket
POLL_TIMEOUT_MS = 10_000  # polling runs every 3 s: one interval, a refetch, and some slack for a busy CI
SAMPLE_BOOKS = json.loads((ROOT / "books.json").read_text(encoding="utf-8"))["books"]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """gunicorn with two workers and the sample catalogue: its port and data directory."""
    data_dir = tmp_path_factory.mktemp("page") / "data"
    with gunicorn_server(data_dir, workers=2, LIBRARY_SEED_FILE=str(ROOT / "books.json")) as port:
        yield port, data_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    """A fresh page at desktop size; its screenshot is saved after the test, passed or failed."""
    with new_tab(browser, tmp_path / "page.png") as tab:
        yield tab


# -- helpers -------------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One API call as a librarian; returns the JSON body of a 2xx answer."""
    return call(port, method, path, body, librarian[port])


def create_book(port: int, title: str) -> dict[str, Any]:
    return request(port, "POST", "/books", {"title": title, "author": "Page Tester", "genre": "Testing"})


def set_loan(data_dir: Path, book_id: int, due_at: str | None) -> None:
    """Lend a book (``due_at``) or return it (None) as another process would: the API has no loan
    routes yet, so the test writes the loans file through the store, like test_live does."""
    store = JsonStore(data_dir, COLLECTIONS, describe=catalogue.describe)

    def change(txn: Any) -> None:
        if due_at is not None:
            txn.insert("loans", {"book_id": book_id, "member_id": 1, "due_at": due_at, "returned_at": None})
            return
        for _, loan in list(txn.items("loans")):
            if loan["book_id"] == book_id and loan.get("returned_at") is None:
                txn.put("loans", {**loan, "returned_at": "2030-01-02T00:00:00Z"})

    try:
        store.update(change)
    finally:
        store.close()


def titles(page: Page) -> list[str]:
    return page.get_by_test_id("book").get_by_test_id("title").all_text_contents()


def row(page: Page, title: str) -> Any:
    return page.get_by_test_id("book").filter(has=page.get_by_test_id("title").get_by_text(title, exact=True))


def unique_word() -> str:
    return "Zq" + uuid.uuid4().hex[:10]


def sample_titles(**match: Any) -> list[str]:
    books = [b for b in SAMPLE_BOOKS if all(b.get(k) == v for k, v in match.items())]
    return sorted(b["title"] for b in books)


# -- tests ---------------------------------------------------------------------------------------


def test_the_browser_is_installed():
    problem = missing_requirements()
    assert problem is None, problem
    assert shutil.which(str(CHROMIUM)), f"{CHROMIUM} is not executable"


def test_the_catalogue_searches_filters_pages_and_stays_live(server, page, tmp_path):
    port, data_dir = server
    page.goto(f"http://127.0.0.1:{port}/")
    books = page.get_by_test_id("book")

    # The first page of the sample catalogue, sorted by title.
    expect(page.get_by_test_id("total")).to_have_text("60")
    expect(books).to_have_count(10)
    first_page = titles(page)
    assert first_page == sorted(first_page, key=str.casefold)
    expect(page.get_by_test_id("prev")).to_be_disabled()
    expect(page.get_by_text("Page 1 of 6")).to_be_visible()
    expect(page.get_by_test_id("connection")).to_have_text("live")

    # Pagination.
    page.get_by_test_id("next").click()
    expect(page.get_by_text("Page 2 of 6")).to_be_visible()
    expect(books).to_have_count(10)
    assert not set(titles(page)) & set(first_page)
    page.get_by_test_id("prev").click()
    expect(page.get_by_text("Page 1 of 6")).to_be_visible()

    # Search (server-side, debounced): only Tolkien's books.
    page.get_by_test_id("search").fill("tolkien")
    expect(page.get_by_test_id("title")).to_have_text(sample_titles(author="J. R. R. Tolkien"))
    expect(page.get_by_test_id("total")).to_have_text("2")
    hobbit = row(page, "The Hobbit")
    expect(hobbit).to_contain_text("J. R. R. Tolkien")
    expect(hobbit).to_contain_text("1937")
    expect(hobbit).to_contain_text("9780547928227")
    expect(hobbit).to_contain_text("Available")

    # A loan made elsewhere shows up as the book's availability, and so does its return.
    hobbit_id = int(hobbit.get_attribute("data-id") or 0)
    set_loan(data_dir, hobbit_id, "2030-01-15T12:00:00Z")
    expect(hobbit).to_contain_text(re.compile(r"Checked out, due .*2030"), timeout=LIVE_TIMEOUT_MS)
    set_loan(data_dir, hobbit_id, None)
    expect(hobbit).to_contain_text("Available", timeout=LIVE_TIMEOUT_MS)

    # The genre filter (server-side, exact): the genres seen so far are offered.
    page.get_by_test_id("search").fill("")
    expect(page.get_by_test_id("total")).to_have_text("60")
    assert "Poetry" in page.locator("#genres option").evaluate_all("options => options.map(o => o.value)")
    page.get_by_test_id("genre").fill("Poetry")
    poetry = sample_titles(genre="Poetry")
    expect(page.get_by_test_id("total")).to_have_text(str(len(poetry)))
    expect(page.get_by_test_id("title")).to_have_text(poetry)
    page.get_by_test_id("genre").fill("")
    expect(page.get_by_test_id("total")).to_have_text("60")

    # A book created through the API appears without a reload; its title is text, not markup.
    word = unique_word()
    page.get_by_test_id("search").fill(word)
    expect(page.get_by_test_id("total")).to_have_text("0")
    expect(books).to_have_count(0)
    title = f"{word} <b>Bold</b> & <img src=x onerror=alert(1)>"
    book = create_book(port, title)
    expect(page.get_by_test_id("title")).to_have_text([title], timeout=LIVE_TIMEOUT_MS)
    expect(page.get_by_test_id("total")).to_have_text("1")
    assert page.locator("[data-testid=book] b, [data-testid=book] img").count() == 0

    # ... and an edit and a deletion too.
    request(port, "PATCH", f"/books/{book['id']}", {"title": f"{word} renamed"})
    expect(page.get_by_test_id("title")).to_have_text([f"{word} renamed"], timeout=LIVE_TIMEOUT_MS)
    request(port, "DELETE", f"/books/{book['id']}")
    expect(books).to_have_count(0, timeout=LIVE_TIMEOUT_MS)
    expect(page.get_by_test_id("connection")).to_have_text("live")

    shot = tmp_path / "catalogue.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot at the end of the test: {shot}")


def test_without_a_websocket_the_page_polls_and_stays_current(server, page):
    port, _ = server
    attempts: list[str] = []

    def refuse(ws: WebSocketRoute) -> None:  # the socket closes before it opens, as a blocked one does
        attempts.append(ws.url)
        ws.close(code=1011, reason="blocked by the test")

    page.route_web_socket(re.compile(r"/ws(\?.*)?$"), refuse)
    polls: list[str] = []
    page.on("request", lambda req: polls.append(req.url) if "/changes?since=" in req.url else None)
    page.goto(f"http://127.0.0.1:{port}/")

    expect(page.get_by_test_id("total")).to_have_text("60")
    expect(page.get_by_test_id("connection")).to_have_text("polling")
    assert attempts, "the page never tried the websocket"

    word = unique_word()
    page.get_by_test_id("search").fill(word)
    expect(page.get_by_test_id("total")).to_have_text("0")
    book = create_book(port, f"{word} polled")
    expect(page.get_by_test_id("title")).to_have_text([f"{word} polled"], timeout=POLL_TIMEOUT_MS)
    expect(page.get_by_test_id("connection")).to_have_text("polling")
    assert polls, "the page showed the book without polling GET /changes"
    request(port, "DELETE", f"/books/{book['id']}")
    expect(page.get_by_test_id("book")).to_have_count(0, timeout=POLL_TIMEOUT_MS)


def test_when_the_websocket_drops_the_page_polls_then_reconnects(server, page):
    port, _ = server
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:  # pass the socket on to the server, keeping a handle on it
        sockets.append(ws)
        ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws(\?.*)?$"), through)
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.get_by_test_id("connection")).to_have_text("live")
    word = unique_word()
    page.get_by_test_id("search").fill(word)
    expect(page.get_by_test_id("total")).to_have_text("0")

    sockets[-1].close(code=1001, reason="going away")
    expect(page.get_by_test_id("connection")).to_have_text("polling")
    book = create_book(port, f"{word} while away")
    expect(page.get_by_test_id("title")).to_have_text([f"{word} while away"], timeout=POLL_TIMEOUT_MS)
    expect(page.get_by_test_id("connection")).to_have_text("live", timeout=POLL_TIMEOUT_MS)
    assert len(sockets) >= 2, "the page did not open the websocket again"
    request(port, "DELETE", f"/books/{book['id']}")
    expect(page.get_by_test_id("book")).to_have_count(0, timeout=LIVE_TIMEOUT_MS)


def test_on_a_phone_the_books_are_cards_that_fit_the_screen(server, browser, tmp_path):
    port, _ = server
    phone_size = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    with new_tab(browser, tmp_path / "phone.png", **phone_size) as phone:
        phone.goto(f"http://127.0.0.1:{port}/")
        expect(phone.get_by_test_id("book")).to_have_count(10)
        expect(phone.locator("thead")).to_be_hidden()
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        first = phone.get_by_test_id("book").first.bounding_box()
        assert first is not None and first["width"] <= 390


def test_an_uploaded_cover_shows_on_the_page(server, page):
    """A librarian uploads a cover; the page shows the image itself (loaded, not a broken link)."""
    from tests.test_uploads import png  # a real 1x1 PNG

    port, _ = server
    word = unique_word()
    book = create_book(port, f"Covered {word}")
    boundary = "page-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {**librarian[port], "Content-Type": f"multipart/form-data; boundary={boundary}"}
    conn.request("POST", f"/books/{book['id']}/cover", body, headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    cover_url = json.loads(response.read())["cover_url"]
    conn.close()
    page.goto(f"http://127.0.0.1:{port}/")
    page.get_by_test_id("search").fill(word)
    image = row(page, f"Covered {word}").locator("img.cover")
    expect(image).to_have_attribute("src", cover_url)
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 1
