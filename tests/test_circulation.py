"""Circulation: SPEC.md "Loans" — borrowing, returns, fines, renewals, holds, payments, and the
reason given for every refusal. Time is the tests' own clock (``CLOCK``), never slept."""

from __future__ import annotations

import http.client
import json
import multiprocessing
from typing import Any

import orjson
import pytest

from library_api import create_app
from tests.conftest import TEST_SECRET, Clock, app_on, assert_problem, client_as
from tests.servers import get_json, gunicorn_server, librarian, sign_in


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_app(data_dir, clock, **settings: Any):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "CLOCK": clock}
    return create_app({**config, **settings})


@pytest.fixture
def app(data_dir, clock, backend):
    config = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "CLOCK": clock}
    with app_on(backend, data_dir, config) as made:
        yield made


@pytest.fixture
def desk(app):
    """The librarian at the desk."""
    return client_as(app, "librarian")


@pytest.fixture
def ada(app):
    return client_as(app, "member", "ada@example.org")


@pytest.fixture
def bob(app):
    return client_as(app, "member", "bob@example.org")


def new_book(desk, title: str = "Dune") -> int:
    response = desk.post("/books", json={"title": title, "author": "Frank Herbert"})
    assert response.status_code == 201
    return response.get_json()["id"]


def borrow(client, book_id: int, **body: Any):
    return client.post(f"/books/{book_id}/borrow", json=body)


# -- borrowing -------------------------------------------------------------------------------------


def test_a_member_borrows_a_book_and_it_is_no_longer_available(app, desk, ada, anon, clock):
    book_id = new_book(desk)
    since = anon.get("/changes").get_json()["last_seq"]
    response = borrow(ada, book_id, days=14)
    assert response.status_code == 201
    loan = response.get_json()
    assert loan["book_id"] == book_id and loan["member_id"] == ada.member["id"]
    assert loan["borrowed_at"] == "2026-03-02T09:00:00Z" and loan["due_at"] == "2026-03-16T09:00:00Z"
    assert loan["returned_at"] is None and loan["renewals"] == 0 and loan["fine"] == 0
    assert response.headers["Location"].endswith(f"/loans/{loan['id']}")
    book = anon.get(f"/books/{book_id}").get_json()
    assert book["status"] == "checked_out" and book["due_at"] == "2026-03-16T09:00:00Z"
    out = anon.get("/books?status=checked_out").get_json()
    assert [(b["id"], b["due_at"]) for b in out["books"]] == [(book_id, "2026-03-16T09:00:00Z")]
    assert anon.get("/books?status=available").get_json()["total"] == 0
    events = anon.get(f"/changes?since={since}").get_json()["changes"]
    assert [(e["action"], e["book"]["status"]) for e in events] == [("updated", "checked_out")]
    assert "ada" not in json.dumps(events) and "member" not in json.dumps(events)


def test_the_default_loan_is_fourteen_days_and_the_bounds_come_from_the_settings(desk, ada):
    first, second, third = new_book(desk, "A"), new_book(desk, "B"), new_book(desk, "C")
    assert ada.post(f"/books/{first}/borrow").get_json()["due_at"] == "2026-03-16T09:00:00Z"
    for days in (0, 61, -1):
        assert "days" in assert_problem(borrow(ada, second, days=days), 422)["errors"]
    for days in ("14", 1.5, True, None):
        assert "days" in assert_problem(borrow(ada, second, days=days), 422)["errors"]
    assert borrow(ada, second, days=60).get_json()["due_at"] == "2026-05-01T09:00:00Z"
    assert "color" in assert_problem(borrow(ada, third, color="red"), 422)["errors"]


def test_borrowing_needs_a_sign_in(desk, anon):
    assert_problem(borrow(anon, new_book(desk)), 401)


def test_a_book_out_cannot_be_borrowed_again(desk, ada, bob):
    book_id = new_book(desk)
    assert borrow(ada, book_id).status_code == 201
    assert_problem(borrow(bob, book_id), 409, "The book is already on loan, due back 2026-03-16")
    assert_problem(borrow(ada, book_id), 409, "The member already has this book on loan")
    assert_problem(borrow(ada, 999), 404, "Book not found")


def test_the_loan_limit(app, desk, ada):
    books = [new_book(desk, f"Book {i}") for i in range(6)]
    for book_id in books[:5]:
        assert borrow(ada, book_id).status_code == 201
    refused = assert_problem(borrow(ada, books[5]), 409)
    assert "5 books on loan" in refused["detail"] and "LIBRARY_MAX_LOANS" in refused["detail"]
    assert ada.post(f"/books/{books[0]}/return").status_code == 200
    assert borrow(ada, books[5]).status_code == 201


def test_a_librarian_lends_on_behalf_of_a_member_and_records_an_earlier_loan(desk, ada, bob):
    book_id, other = new_book(desk, "A"), new_book(desk, "B")
    assert_problem(borrow(ada, book_id, member_id=bob.member["id"]), 403)
    assert_problem(borrow(ada, book_id, borrowed_at="2026-02-01T10:00:00Z"), 403)
    loan = borrow(desk, book_id, member_id=bob.member["id"], borrowed_at="2026-02-01T12:00:00+02:00", days=7)
    assert loan.status_code == 201
    assert loan.get_json()["member_id"] == bob.member["id"]
    assert (
        loan.get_json()["borrowed_at"] == "2026-02-01T10:00:00Z" and loan.get_json()["due_at"] == "2026-02-08T10:00:00Z"
    )
    assert loan.get_json()["status"] == "overdue"
    assert (
        "borrowed_at"
        in assert_problem(borrow(desk, other, member_id=bob.member["id"], borrowed_at="2027-01-01T00:00:00Z"), 422)[
            "errors"
        ]
    )
    assert_problem(borrow(desk, other, member_id=999), 404, "Member not found")
    assert borrow(ada, other, member_id=ada.member["id"]).status_code == 201


# -- returns and fines -----------------------------------------------------------------------------


def test_only_the_borrower_or_a_librarian_returns_a_book(desk, ada, bob, anon):
    book_id = new_book(desk)
    borrow(ada, book_id)
    assert_problem(anon.post(f"/books/{book_id}/return"), 401)
    assert_problem(bob.post(f"/books/{book_id}/return"), 403)
    returned = ada.post(f"/books/{book_id}/return")
    assert returned.status_code == 200
    assert returned.get_json()["returned_at"] == "2026-03-02T09:00:00Z" and returned.get_json()["fine"] == 0
    assert_problem(ada.post(f"/books/{book_id}/return"), 409, "The book is not on loan")
    assert anon.get(f"/books/{book_id}").get_json()["status"] == "available"
    borrow(bob, book_id)
    assert desk.post(f"/books/{book_id}/return").get_json()["member_id"] == bob.member["id"]


def test_a_loan_six_days_late_costs_three(desk, ada, clock):
    book_id = new_book(desk)
    borrow(ada, book_id, days=14)  # due 2026-03-16 09:00
    clock.advance(days=20, hours=5)  # 2026-03-22 14:00: six calendar days after the due date
    assert ada.get("/members/me").get_json()["fines_due"] == 3.0
    loan = ada.post(f"/books/{book_id}/return").get_json()
    assert loan["fine"] == 3.0 and loan["status"] == "returned"
    clock.advance(days=30)  # a returned loan's fine does not grow
    assert ada.get("/members/me").get_json()["fines_due"] == 3.0


@pytest.mark.parametrize(
    ("returned", "fine"),
    [("2026-03-16T23:59:00", 0), ("2026-03-17T00:01:00", 0.5), ("2026-03-18T08:00:00", 1.0)],
)
def test_late_days_are_whole_utc_calendar_days(desk, ada, clock, returned, fine):
    from datetime import UTC, datetime

    book_id = new_book(desk)
    borrow(ada, book_id, days=14)
    clock.now = datetime.fromisoformat(returned).replace(tzinfo=UTC)
    assert ada.post(f"/books/{book_id}/return").get_json()["fine"] == fine


def test_grace_days_and_the_cap_per_loan(data_dir, clock):
    app = make_app(data_dir, clock, FINE_GRACE_DAYS=2, MAX_FINE="2.00", FINE_PER_DAY="0.25")
    desk, ada = client_as(app, "librarian"), client_as(app, "member")
    a, b, c = new_book(desk, "A"), new_book(desk, "B"), new_book(desk, "C")
    for book_id in (a, b, c):
        borrow(ada, book_id, days=1)  # due 2026-03-03 09:00
    clock.advance(days=3)  # two days late: within the grace
    assert ada.post(f"/books/{a}/return").get_json()["fine"] == 0
    clock.advance(days=1)  # three days late: every day counts
    assert ada.post(f"/books/{b}/return").get_json()["fine"] == 0.75
    clock.advance(days=30)
    assert ada.post(f"/books/{c}/return").get_json()["fine"] == 2.0


def test_fines_block_borrowing_until_a_payment(desk, ada, clock):
    books = [new_book(desk, f"Book {i}") for i in range(3)]
    borrow(ada, books[0], days=1)
    clock.advance(days=24)  # 23 days late: 11.50
    ada.post(f"/books/{books[0]}/return")
    refused = assert_problem(borrow(ada, books[1]), 409)
    assert "owes 11.50" in refused["detail"] and "LIBRARY_MAX_FINES_DUE" in refused["detail"]
    me = ada.member["id"]
    assert_problem(ada.post(f"/members/{me}/payments", json={"amount": 5}), 403)
    assert_problem(
        desk.post(f"/members/{me}/payments", json={"amount": 12}),
        409,
        "The member owes 11.50; a payment cannot be more than that",
    )
    for bad in (0, -1, 1.234, "ten", None, True):
        assert "amount" in assert_problem(desk.post(f"/members/{me}/payments", json={"amount": bad}), 422)["errors"]
    paid = desk.post(f"/members/{me}/payments", json={"amount": 1.5})
    assert paid.status_code == 201
    assert paid.get_json()["amount"] == 1.5 and paid.get_json()["fines_due"] == 10.0
    assert borrow(ada, books[1]).status_code == 201  # 10.00 is not more than the limit
    assert desk.get(f"/members/{me}").get_json()["fines_due"] == 10.0
    assert_problem(desk.post("/members/999/payments", json={"amount": 1}), 404, "Member not found")


def test_member_listings_show_open_loans_and_fines(desk, ada, bob, clock):
    a, b = new_book(desk, "A"), new_book(desk, "B")
    loan = borrow(ada, a, days=2).get_json()
    borrow(bob, b, days=10)
    clock.advance(days=5)  # ada's loan: 3 days late
    listed = {m["email"]: m for m in desk.get("/members?role=member").get_json()["members"]}
    assert listed["ada@example.org"]["loans"] == [
        {"loan_id": loan["id"], "book_id": a, "title": "A", "due_at": "2026-03-04T09:00:00Z"}
    ]
    assert listed["ada@example.org"]["fines_due"] == 1.5 and listed["bob@example.org"]["fines_due"] == 0


# -- renewals --------------------------------------------------------------------------------------


def test_renewals_extend_by_the_loans_own_period_up_to_the_limit(desk, ada, bob):
    book_id = new_book(desk)
    loan = borrow(ada, book_id, days=7).get_json()
    path = f"/loans/{loan['id']}/renew"
    assert_problem(bob.post(path), 403)
    first = ada.post(path).get_json()
    assert first["due_at"] == "2026-03-16T09:00:00Z" and first["renewals"] == 1
    assert desk.post(path).get_json()["due_at"] == "2026-03-23T09:00:00Z"
    refused = assert_problem(ada.post(path), 409)
    assert "renewed 2 times" in refused["detail"] and "LIBRARY_MAX_RENEWALS" in refused["detail"]
    assert_problem(ada.post("/loans/999/renew"), 404, "Loan not found")


def test_an_overdue_or_returned_loan_is_not_renewed(desk, ada, clock):
    book_id = new_book(desk)
    loan = borrow(ada, book_id, days=1).get_json()
    clock.advance(days=2)
    assert "overdue" in assert_problem(ada.post(f"/loans/{loan['id']}/renew"), 409)["detail"]
    ada.post(f"/books/{book_id}/return")
    assert "returned" in assert_problem(ada.post(f"/loans/{loan['id']}/renew"), 409)["detail"]


def test_a_loan_someone_waits_for_is_not_renewed(anon, desk, ada, bob):
    book_id = new_book(desk)
    loan = borrow(ada, book_id).get_json()
    assert bob.post(f"/books/{book_id}/hold").status_code == 201
    assert "waiting" in assert_problem(ada.post(f"/loans/{loan['id']}/renew"), 409)["detail"]


# -- loans list ------------------------------------------------------------------------------------


def test_the_loans_list_is_own_for_members_and_everything_for_librarians(desk, ada, bob, clock):
    a, b, c = new_book(desk, "A"), new_book(desk, "B"), new_book(desk, "C")
    borrow(ada, a, days=1)
    borrow(ada, b, days=30)
    borrow(bob, c, days=30)
    ada.post(f"/books/{b}/return")
    clock.advance(days=3)
    own = ada.get("/loans").get_json()
    assert own["total"] == 2 and {loan["member_id"] for loan in own["loans"]} == {ada.member["id"]}
    assert_problem(ada.get(f"/loans?member_id={bob.member['id']}"), 403)
    assert ada.get(f"/loans?member_id={ada.member['id']}").get_json()["total"] == 2
    everything = desk.get("/loans?limit=2").get_json()
    assert everything["total"] == 3 and everything["pages"] == 2 and len(everything["loans"]) == 2
    assert [loan["book_id"] for loan in desk.get("/loans?status=overdue").get_json()["loans"]] == [a]
    assert sorted(loan["book_id"] for loan in desk.get("/loans?status=active").get_json()["loans"]) == [a, c]
    assert [loan["book_id"] for loan in desk.get("/loans?status=returned").get_json()["loans"]] == [b]
    assert [loan["book_id"] for loan in desk.get(f"/loans?book_id={c}").get_json()["loans"]] == [c]
    assert [loan["book_id"] for loan in desk.get("/loans?sort_by=-due_at").get_json()["loans"]] == [b, c, a]  # ties: id
    assert_problem(desk.get("/loans?status=late"), 422)
    assert_problem(ada.get("/loans/1".replace("1", str(own["loans"][0]["id"] + 100))), 404, "Loan not found")


# -- holds -----------------------------------------------------------------------------------------


def test_holds_queue_in_order_and_the_book_is_kept_for_the_first(app, anon, desk, ada, bob):
    carol = client_as(app, "member", "carol@example.org")
    book_id = new_book(desk)
    assert_problem(
        bob.post(f"/books/{book_id}/hold"), 409, "The book is available: borrow it instead of placing a hold"
    )
    borrow(ada, book_id)
    assert_problem(ada.post(f"/books/{book_id}/hold"), 409, "The member has this book on loan")
    first = bob.post(f"/books/{book_id}/hold")
    assert first.status_code == 201
    assert first.get_json()["position"] == 1 and first.get_json()["status"] == "waiting"
    assert_problem(bob.post(f"/books/{book_id}/hold"), 409, "The member already waits for this book")
    assert carol.post(f"/books/{book_id}/hold").get_json()["position"] == 2
    ada.post(f"/books/{book_id}/return")
    book = anon.get(f"/books/{book_id}").get_json()
    assert book["status"] == "on_hold"
    assert anon.get("/books?status=on_hold").get_json()["total"] == 1
    assert anon.get("/books?status=available").get_json()["total"] == 0
    held = bob.get("/holds").get_json()["holds"]
    assert [(h["status"], h["position"], h["expires_at"]) for h in held] == [("ready", 1, "2026-03-05T09:00:00Z")]
    refused = assert_problem(borrow(carol, book_id), 409)
    assert "kept for a member who placed a hold" in refused["detail"]
    assert_problem(borrow(ada, book_id), 409)
    assert borrow(bob, book_id).status_code == 201
    assert bob.get("/holds").get_json()["holds"][0]["status"] == "fulfilled"
    assert [(h["status"], h["position"]) for h in carol.get("/holds").get_json()["holds"]] == [("waiting", 1)]


def test_anyone_sees_how_many_wait_for_a_book_but_not_who(app, anon, desk, ada, bob, clock):
    carol = client_as(app, "member", "carol@example.org")
    book_id = new_book(desk)
    assert anon.get(f"/books/{book_id}/queue").get_json() == {"book_id": book_id, "holds": 0}
    borrow(ada, book_id)
    bob.post(f"/books/{book_id}/hold")
    carol.post(f"/books/{book_id}/hold")
    answer = anon.get(f"/books/{book_id}/queue")
    assert answer.status_code == 200 and answer.get_json() == {"book_id": book_id, "holds": 2}
    ada.post(f"/books/{book_id}/return")  # kept for bob: still in the queue, carol waits
    assert anon.get(f"/books/{book_id}/queue").get_json()["holds"] == 2
    clock.advance(days=3, seconds=1)  # bob's keep ran out (no housekeeper yet): carol's turn
    assert anon.get(f"/books/{book_id}/queue").get_json()["holds"] == 1
    assert borrow(carol, book_id).status_code == 201
    assert anon.get(f"/books/{book_id}/queue").get_json()["holds"] == 0
    assert_problem(anon.get("/books/999999/queue"), 404, "Book not found")


def test_a_hold_placed_after_a_keep_ran_out_but_before_the_housekeeper_sees_the_book_free(
    app, anon, desk, ada, bob, clock
):
    carol = client_as(app, "member", "carol@example.org")
    book_id = new_book(desk)
    borrow(ada, book_id)
    assert bob.post(f"/books/{book_id}/hold").status_code == 201
    ada.post(f"/books/{book_id}/return")  # kept for bob until 2026-03-05 09:00
    clock.advance(days=3, seconds=1)  # bob's time is over; no housekeeper has run since
    assert_problem(
        carol.post(f"/books/{book_id}/hold"), 409, "The book is available: borrow it instead of placing a hold"
    )
    assert bob.get("/holds").get_json()["holds"][0]["status"] == "expired"
    assert borrow(carol, book_id).status_code == 201


def test_a_kept_book_passes_to_the_next_when_the_hold_expires(app, anon, desk, ada, bob, clock):
    carol = client_as(app, "member", "carol@example.org")
    book_id = new_book(desk)
    borrow(ada, book_id)
    bob.post(f"/books/{book_id}/hold")
    carol.post(f"/books/{book_id}/hold")
    ada.post(f"/books/{book_id}/return")  # kept for bob until 2026-03-05 09:00
    clock.advance(days=3, seconds=1)
    assert bob.get("/holds").get_json()["holds"][0]["status"] == "expired"
    carols = carol.get("/holds").get_json()["holds"][0]
    assert (carols["status"], carols["position"], carols["expires_at"]) == ("ready", 1, "2026-03-08T09:00:00Z")
    assert_problem(borrow(bob, book_id), 409)
    assert borrow(carol, book_id).status_code == 201


def test_the_server_passes_expired_holds_on_by_itself_and_tells_live_clients(app, anon, desk, ada, bob, clock):
    book_id = new_book(desk)
    borrow(ada, book_id)
    bob.post(f"/books/{book_id}/hold")
    ada.post(f"/books/{book_id}/return")
    assert anon.get(f"/books/{book_id}").get_json()["status"] == "on_hold"
    since = anon.get("/changes").get_json()["last_seq"]
    housekeeper = app.extensions["library_housekeeper"]
    assert housekeeper.run_once() == 0  # nothing is due yet
    clock.advance(days=3)
    assert housekeeper.run_once() == 1
    assert anon.get(f"/books/{book_id}").get_json()["status"] == "available"
    events = anon.get(f"/changes?since={since}").get_json()["changes"]
    assert [(e["action"], e["book"]["status"]) for e in events] == [("updated", "available")]
    assert housekeeper.run_once() == 0


def test_cancelling_holds(app, desk, ada, bob):
    carol = client_as(app, "member", "carol@example.org")
    book_id = new_book(desk)
    borrow(ada, book_id)
    bobs = bob.post(f"/books/{book_id}/hold").get_json()
    carols = carol.post(f"/books/{book_id}/hold").get_json()
    assert_problem(carol.delete(f"/holds/{bobs['id']}"), 403)
    ada.post(f"/books/{book_id}/return")  # kept for bob
    cancelled = bob.delete(f"/holds/{bobs['id']}")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert_problem(bob.delete(f"/holds/{bobs['id']}"), 409, "The hold has already ended (cancelled)")
    now_carol = carol.get(f"/holds/{carols['id']}").get_json()
    assert now_carol["status"] == "ready" and now_carol["position"] == 1
    assert desk.delete(f"/holds/{carols['id']}").status_code == 200
    assert desk.get(f"/books/{book_id}").get_json()["status"] == "available"
    assert_problem(desk.delete("/holds/999"), 404, "Hold not found")
    assert len(desk.get("/holds").get_json()["holds"]) == 2
    assert desk.get("/holds?status=active").get_json()["total"] == 0


def test_deleting_a_book_on_loan_is_refused_and_deleting_a_held_one_cancels_its_holds(desk, ada, bob):
    book_id = new_book(desk)
    borrow(ada, book_id)
    assert "on loan" in assert_problem(desk.delete(f"/books/{book_id}"), 409)["detail"]
    bob.post(f"/books/{book_id}/hold")
    ada.post(f"/books/{book_id}/return")
    assert desk.delete(f"/books/{book_id}").status_code == 200
    assert bob.get("/holds").get_json()["holds"][0]["status"] == "cancelled"


# -- the overdue report ----------------------------------------------------------------------------


def test_the_overdue_report(app, desk, ada, bob, clock):
    a, b = new_book(desk, "The Left Hand of Darkness"), new_book(desk, "B")
    borrow(ada, a, days=1)
    borrow(bob, b, days=30)
    runner = app.test_cli_runner()
    assert "No loan is overdue." in runner.invoke(args=["overdue"]).output
    clock.advance(days=7)  # ada: 6 days late
    table = runner.invoke(args=["overdue"])
    assert table.exit_code == 0
    assert "Ada Tester" in table.output and "The Left Hand of Darkness" in table.output
    assert "3.00" in table.output and "1 overdue loan" in table.output
    report = orjson.loads(runner.invoke(args=["overdue", "--json"]).output)["overdue"]
    assert [(r["email"], r["book_id"], r["days_late"], r["fine"]) for r in report] == [("ada@example.org", a, 6, 3.0)]


# -- settings --------------------------------------------------------------------------------------


def test_a_lending_setting_that_is_not_a_number_stops_start_up(data_dir, clock):
    with pytest.raises(ValueError, match="LIBRARY_FINE_PER_DAY"):
        make_app(data_dir, clock, FINE_PER_DAY="half a euro")


# -- races through real processes ------------------------------------------------------------------


def _borrow_over_http(args: tuple[int, int, dict[str, str]]) -> int:
    port, book_id, headers = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/books/{book_id}/borrow", json.dumps({"days": 7}), headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _create_book(port: int, title: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/books", json.dumps({"title": title, "author": "Racer"}), librarian[port])
    response = conn.getresponse()
    assert response.status == 201
    book_id = json.loads(response.read())["id"]
    conn.close()
    return book_id


def test_twenty_members_racing_for_one_book_through_three_workers(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=3) as port:
        book_id = _create_book(port, "Wanted")
        racers = sign_in(data, "member", 20)
        with multiprocessing.get_context("fork").Pool(20) as pool:
            statuses = pool.map(_borrow_over_http, [(port, book_id, h) for h in racers])
        assert sorted(statuses) == [201] + [409] * 19
        assert get_json(port, f"/books/{book_id}")[1]["status"] == "checked_out"
    loans = orjson.loads((data / "loans.json").read_bytes())["loans"]
    assert len(loans) == 1


def test_one_member_racing_past_the_loan_limit_gets_no_more_than_the_limit(tmp_path):
    data = tmp_path / "data"
    with gunicorn_server(data, workers=3) as port:
        books = [_create_book(port, f"Book {i}") for i in range(12)]
        (racer,) = sign_in(data, "member", 1)
        with multiprocessing.get_context("fork").Pool(12) as pool:
            statuses = pool.map(_borrow_over_http, [(port, book_id, racer) for book_id in books])
    assert sorted(statuses) == [201] * 5 + [409] * 7
    loans = orjson.loads((data / "loans.json").read_bytes())["loans"]
    assert len(loans) == 5


def test_writes_committed_by_the_housekeeper_keep_their_own_request(app, anon, desk, ada, bob, clock):
    """Group commit: the thread that takes the lock runs every waiting write. Here the hold
    housekeeper (no request, no app context) commits five queued requests: each must be judged
    by its own headers and time."""
    import threading
    import time

    admin = client_as(app, "admin")
    kept, stale_one, fresh_one, wanted = (new_book(desk, t) for t in ("Kept", "Stale", "Fresh", "Wanted"))
    borrow(ada, kept)
    bob.post(f"/books/{kept}/hold")
    ada.post(f"/books/{kept}/return")
    clock.advance(days=3)  # bob's keep is over: the housekeeper has work
    leaving = client_as(app, "member")
    stale_etag = desk.get(f"/books/{stale_one}").headers["ETag"]
    desk.patch(f"/books/{stale_one}", json={"genre": "changed"})
    fresh_etag = desk.get(f"/books/{fresh_one}").headers["ETag"]
    calls = {
        "stale delete": lambda: desk.delete(f"/books/{stale_one}", headers={"If-Match": stale_etag}),
        "fresh delete": lambda: desk.delete(f"/books/{fresh_one}", headers={"If-Match": fresh_etag}),
        "rename": lambda: desk.patch(f"/members/{ada.member['id']}", json={"first_name": "Augusta"}),
        "borrow": lambda: borrow(ada, wanted),
        "member delete": lambda: admin.delete(f"/members/{leaving.member['id']}"),
    }
    statuses: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda n=n, c=c: statuses.__setitem__(n, c().status_code)) for n, c in calls.items()
    ]
    store = app.extensions["library_store"]
    with store.exclusive():  # the writes queue up behind this thread, which then leads their commit
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while store.waiting_writes < len(calls):
            assert time.monotonic() < deadline, "the writes did not queue"
            time.sleep(0.001)
        assert app.extensions["library_housekeeper"].run_once() == 1
    for thread in threads:
        thread.join()
    assert statuses == {"stale delete": 412, "fresh delete": 200, "rename": 200, "borrow": 201, "member delete": 200}
    assert anon.get(f"/books/{kept}").get_json()["status"] == "available"


def test_deleting_a_member_a_book_is_kept_for_passes_it_on(app, anon, desk, ada, bob):
    carol = client_as(app, "member", "carol@example.org")
    admin = client_as(app, "admin")
    book_id = new_book(desk)
    borrow(ada, book_id)
    bob.post(f"/books/{book_id}/hold")
    carol.post(f"/books/{book_id}/hold")
    ada.post(f"/books/{book_id}/return")  # kept for bob
    assert admin.delete(f"/members/{bob.member['id']}").status_code == 200
    carols = carol.get("/holds").get_json()["holds"][0]
    assert (carols["status"], carols["position"]) == ("ready", 1)
    assert anon.get(f"/books/{book_id}").get_json()["status"] == "on_hold"
    assert_problem(borrow(ada, book_id), 409)
    assert borrow(carol, book_id).status_code == 201
    assert carol.get("/holds").get_json()["holds"][0]["status"] == "fulfilled"


def test_a_renewal_and_a_return_are_updates_of_the_book_on_the_feed(anon, desk, ada):
    book_id = new_book(desk)
    loan = borrow(ada, book_id).get_json()
    since = anon.get("/changes").get_json()["last_seq"]
    ada.post(f"/loans/{loan['id']}/renew")
    ada.post(f"/books/{book_id}/return")
    events = anon.get(f"/changes?since={since}").get_json()["changes"]
    assert [(e["action"], e["book"]["status"], e["book"]["due_at"]) for e in events] == [
        ("updated", "checked_out", "2026-03-30T09:00:00Z"),
        ("updated", "available", None),
    ]


def test_others_loans_and_holds_are_not_shown_to_a_member(desk, ada, bob):
    book_id = new_book(desk)
    loan = borrow(ada, book_id).get_json()
    hold = bob.post(f"/books/{book_id}/hold").get_json()
    assert_problem(bob.get(f"/loans/{loan['id']}"), 403)
    assert_problem(ada.get(f"/holds/{hold['id']}"), 403)
    assert_problem(ada.get(f"/holds?member_id={bob.member['id']}"), 403)
    assert desk.get(f"/loans/{loan['id']}").status_code == 200


def test_a_backdated_loan_must_be_a_real_recent_time(desk, ada):
    book_id = new_book(desk)
    for when in ("0001-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z", "yesterday", "2026-03-01T10:00:00"):
        body = {"member_id": ada.member["id"], "borrowed_at": when}
        assert "borrowed_at" in assert_problem(borrow(desk, book_id, **body), 422)["errors"], when


def test_loan_and_hold_lists_send_etags(desk, ada, bob):
    book_id = new_book(desk)
    borrow(ada, book_id)
    bob.post(f"/books/{book_id}/hold")
    for path in ("/loans", "/holds", "/loans/1", "/holds/1"):
        first = desk.get(path)
        assert first.status_code == 200 and first.headers["ETag"]
        assert desk.get(path, headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
