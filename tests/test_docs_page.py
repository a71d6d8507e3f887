"""The API reference page (/docs) in a real headless browser: signing in and trying operations.

Like test_page, the page is served by gunicorn as the Procfile runs it, and a missing ``chromium``
or ``playwright`` fails these tests rather than skipping them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browsers import call, launched, new_tab
from tests.servers import gunicorn_server, librarian

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """gunicorn with one worker and an empty catalogue."""
    with gunicorn_server(tmp_path_factory.mktemp("docs") / "data", workers=1) as server_port:
        yield server_port


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Browser, port: int, tmp_path: Path) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at /docs; its screenshot is saved after the test."""
    with new_tab(browser, tmp_path / "docs.png") as tab:
        tab.goto(f"http://127.0.0.1:{port}/docs")
        expect(tab.get_by_test_id("operation").first).to_be_visible()
        yield tab


# -- helpers -------------------------------------------------------------------------------------


def register(port: int) -> str:
    """A new member who signs in with :data:`PASSWORD`; returns their email."""
    email = f"docs-{uuid.uuid4().hex[:10]}@example.org"
    body = {"email": email, "password": PASSWORD, "first_name": "Dora", "last_name": "Docs"}
    call(port, "POST", "/auth/register", body, {"Content-Type": "application/json"})
    return email


def sign_in(page: Page, email: str, password: str) -> None:
    page.get_by_test_id("signin-email").fill(email)
    page.get_by_test_id("signin-password").fill(password)
    page.get_by_test_id("signin-submit").click()


def operation(page: Page, operation_id: str) -> Locator:
    return page.locator(f"[data-testid=operation][data-operation-id={operation_id}]")


def try_it(op: Locator, *, body: str | None = None, query: str | None = None, **path_params: str) -> None:
    """Open the operation's "Try it" form (if it is closed), fill it in and send it."""
    if not op.get_by_test_id("try-send").is_visible():
        op.get_by_test_id("try-toggle").click()
    for name, value in path_params.items():
        op.get_by_test_id(f"try-param-{name}").fill(value)
    if query is not None:
        op.get_by_test_id("try-query").fill(query)
    if body is not None:
        op.get_by_test_id("try-body").fill(body)
    op.get_by_test_id("try-send").click()


# -- tests ---------------------------------------------------------------------------------------


def test_sign_in_try_a_write_then_sign_out_and_try_a_read(page, port):
    email = register(port)
    expect(page.get_by_test_id("whoami")).to_have_text("Not signed in.")

    sign_in(page, email, PASSWORD)
    expect(page.get_by_test_id("whoami")).to_contain_text(email)
    expect(page.get_by_test_id("whoami")).to_contain_text("member")
    expect(page.get_by_test_id("signin-email")).to_be_hidden()
    expect(page.get_by_test_id("signin-error")).to_be_hidden()
    page.reload()  # the token is kept for the tab
    expect(page.get_by_test_id("whoami")).to_contain_text(email)

    # A member may not write books: 403, not 401, so the token was sent.
    create = operation(page, "create_book")
    expect(create.get_by_test_id("needs-signin")).to_have_text("Needs a bearer token: librarians and admins.")
    expect(create.get_by_test_id("try-body")).to_be_hidden()
    create.get_by_test_id("try-toggle").click()
    expect(create.get_by_test_id("try-body")).to_have_value("{}")
    try_it(create, body='{"title": "Tried", "author": "Someone"}')
    expect(create.get_by_test_id("try-status")).to_have_text(re.compile(r"^403\b"))
    expect(create.get_by_test_id("try-response")).to_contain_text('"detail": "Only librarians and admins can do this"')

    # Signing out forgets the token: the same request is now a 401.
    page.get_by_test_id("signout").click()
    expect(page.get_by_test_id("whoami")).to_have_text("Not signed in.")
    expect(page.get_by_test_id("signout")).to_be_hidden()
    expect(page.get_by_test_id("signin-email")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    try_it(create)
    expect(create.get_by_test_id("try-status")).to_have_text(re.compile(r"^401\b"))

    # Reading books needs no sign-in; the query string is sent and the ETag shown.
    books = operation(page, "list_books")
    expect(books.get_by_test_id("needs-signin")).to_have_count(0)
    try_it(books, query="q=Tried")
    expect(books.get_by_test_id("try-status")).to_have_text(re.compile(r"^200\b"))
    expect(books.get_by_test_id("try-response")).to_contain_text('"total": 0')
    expect(books.get_by_test_id("try-etag")).to_have_text(re.compile(r'^ETag: "\d+"$'))


def test_a_wrong_password_shows_the_problem_detail(page, port):
    email = register(port)
    sign_in(page, email, "not the password")
    expect(page.get_by_test_id("signin-error")).to_have_text("The email or password is wrong")
    expect(page.get_by_test_id("whoami")).to_have_text("Not signed in.")
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page, email, PASSWORD)  # the error goes once the sign-in works
    expect(page.get_by_test_id("whoami")).to_contain_text(email)
    expect(page.get_by_test_id("signin-error")).to_be_hidden()


def test_path_parameters_are_filled_in(page, port):
    book = call(port, "POST", "/books", {"title": "Pathed", "author": "Someone"}, librarian[port])
    get_book = operation(page, "get_book")
    try_it(get_book, book_id=str(book["id"]))
    expect(get_book.get_by_test_id("try-status")).to_have_text(re.compile(r"^200\b"))
    expect(get_book.get_by_test_id("try-response")).to_contain_text('"title": "Pathed"')
    expect(get_book.get_by_test_id("try-etag")).to_be_visible()
    try_it(get_book, book_id="999999")
    expect(get_book.get_by_test_id("try-status")).to_have_text(re.compile(r"^404\b"))
    expect(get_book.get_by_test_id("try-response")).to_contain_text('"detail": "Book not found"')
