"""Lending: loans, renewals, returns, holds and payments of fines."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import orjson
from flask import Blueprint, Response, request, url_for
from marshmallow import ValidationError
from werkzeug.exceptions import (
    Forbidden,
    NotFound,
)

from library import circulation, members
from library.context import (
    now,
    rules,
    stamp,
    store,
)
from library.schemas import (
    BorrowSchema,
    HoldListSchema,
    HoldQuerySchema,
    HoldRequestSchema,
    HoldSchema,
    LoanListSchema,
    LoanQuerySchema,
    LoanSchema,
    PaymentResultSchema,
    PaymentSchema,
    QueueSchema,
    borrow_schema,
    hold_query_schema,
    hold_request_schema,
    loan_query_schema,
    payment_schema,
)
from library.web.http import documented, json_body, json_response, optional_json_body, paginated, private, signed_in
from storage import (
    Txn,
)

bp = Blueprint("lending", __name__)


log = logging.getLogger("library_api")


def acting_for(actor: dict[str, Any], data: dict[str, Any], what: str) -> int:
    """The member a request acts for: ``member_id`` (a librarian's choice) or the actor."""
    member_id = data.get("member_id", actor["id"])
    if member_id != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden(f"Only librarians can {what} for another member")
    return member_id


@bp.post("/books/<id:book_id>/borrow")
@documented(
    body=BorrowSchema,
    body_optional=True,
    response=LoanSchema,
    status=201,
    errors=(400, 404, 409, 415, 422),
    auth="member",
)
def borrow_book(book_id: int) -> Response:
    """Borrow a book: for yourself, or (librarians) for a member, possibly backdated."""
    actor = signed_in()
    data = borrow_schema.load(optional_json_body())
    lending, moment = rules(), now()
    member_id = acting_for(actor, data, "lend books")
    days = data.get("days", lending.loan_days)
    if not 1 <= days <= lending.max_loan_days:
        raise ValidationError({"days": [f"Must be between 1 and {lending.max_loan_days}."]})
    borrowed_at = data.get("borrowed_at")
    if borrowed_at is not None:
        if not members.at_least(actor, "librarian"):
            raise Forbidden("Only librarians can record a loan made earlier")
        if borrowed_at > moment:
            raise ValidationError({"borrowed_at": ["Must not be in the future."]})
        if borrowed_at < moment - timedelta(days=365):
            raise ValidationError({"borrowed_at": ["Must be within the last year."]})

    def lend(txn: Any) -> dict[str, Any]:
        current = members.actor_in(txn, actor["id"])
        return circulation.borrow(txn, current, book_id, member_id, days, borrowed_at, moment, lending)

    loan = store().update(lend)
    body = orjson.dumps(circulation.public_loan(loan, moment, lending))
    return json_response(body, 201, Location=url_for("lending.get_loan", loan_id=loan["id"]))


@bp.post("/books/<id:book_id>/return")
@documented(response=LoanSchema, errors=(404, 409), auth="member")
def return_book(book_id: int) -> Response:
    """Return a book (its borrower, or a librarian): the loan closes with its fine."""
    actor = signed_in()
    lending, moment = rules(), now()
    loan = store().update(
        lambda txn: circulation.give_back(txn, members.actor_in(txn, actor["id"]), book_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_loan(loan, moment, lending)))


@bp.post("/loans/<id:loan_id>/renew")
@documented(response=LoanSchema, errors=(404, 409), auth="member")
def renew_loan(loan_id: int) -> Response:
    """Extend a loan by its own period (not when overdue, at the limit, or someone waits)."""
    actor = signed_in()
    lending, moment = rules(), now()
    loan = store().update(
        lambda txn: circulation.renew(txn, members.actor_in(txn, actor["id"]), loan_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_loan(loan, moment, lending)))


@bp.get("/loans")
@documented(query=LoanQuerySchema, response=LoanListSchema, errors=(422,), auth="member")
def list_loans() -> Response:
    """Loans: a member's own; every loan for a librarian."""
    actor = signed_in()
    args = loan_query_schema.load(request.args.to_dict())
    if not members.at_least(actor, "librarian") and args.setdefault("member_id", actor["id"]) != actor["id"]:
        raise Forbidden("Only librarians can see other members' loans")
    lending, moment = rules(), now()
    snap = store().snapshot()
    if "member_id" in args:  # through the per-snapshot index: a member's page costs their loans only
        chosen = Txn(snap).where("loans", "member_id", args["member_id"])
    else:
        chosen = list(snap.records("loans").values())
    if "book_id" in args:
        chosen = [loan for loan in chosen if loan["book_id"] == args["book_id"]]
    wanted, now_stamp = args.get("status"), stamp(moment)
    if wanted == "returned":
        chosen = [loan for loan in chosen if loan.get("returned_at") is not None]
    elif wanted in ("active", "overdue"):
        chosen = [loan for loan in chosen if loan.get("returned_at") is None]
        if wanted == "overdue":  # ISO 8601 UTC stamps compare as text
            chosen = [loan for loan in chosen if loan["due_at"] < now_stamp]
    sort_by = args["sort_by"]
    field = sort_by.lstrip("-")
    if field != "id":
        present = [loan for loan in chosen if loan.get(field) is not None]
        present.sort(key=lambda loan: loan[field], reverse=sort_by.startswith("-"))  # stable: ties by id
        chosen = present + [loan for loan in chosen if loan.get(field) is None]
    elif sort_by.startswith("-"):
        chosen.reverse()
    return paginated(
        "loans", chosen, args["page"], args["limit"], lambda loan: circulation.public_loan(loan, moment, lending)
    )


@bp.get("/loans/<id:loan_id>")
@documented(response=LoanSchema, errors=(404,), auth="member")
def get_loan(loan_id: int) -> Response:
    """One loan (your own, or any for a librarian)."""
    actor = signed_in()
    loan = store().snapshot().get("loans", loan_id)
    if loan is None:
        raise NotFound("Loan not found")
    if loan["member_id"] != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden("Only librarians can see other members' loans")
    return private(orjson.dumps(circulation.public_loan(loan, now(), rules())))


@bp.post("/books/<id:book_id>/hold")
@documented(
    body=HoldRequestSchema,
    body_optional=True,
    response=HoldSchema,
    status=201,
    errors=(400, 404, 409, 415, 422),
    auth="member",
)
def hold_book(book_id: int) -> Response:
    """Join the queue for a book that is out; it is kept for you when your turn comes."""
    actor = signed_in()
    data = hold_request_schema.load(optional_json_body())
    member_id = acting_for(actor, data, "place holds")
    lending, moment = rules(), now()
    hold, position = store().update(
        lambda txn: circulation.place_hold(txn, members.actor_in(txn, actor["id"]), book_id, member_id, moment, lending)
    )
    body = orjson.dumps(circulation.public_hold(hold, position))
    return json_response(body, 201, Location=url_for("lending.get_hold", hold_id=hold["id"]))


@bp.get("/books/<id:book_id>/queue")
@documented(response=QueueSchema, errors=(404,))
def book_queue(book_id: int) -> Response:
    """How many wait for a book (public: a count, never who)."""
    current = holds_now()
    if current.get("books", book_id) is None:
        raise NotFound("Book not found")
    body = {"book_id": book_id, "holds": len(circulation.queue(current, book_id))}
    return json_response(orjson.dumps(body), **{"Cache-Control": "no-cache"})


def holds_now() -> Any:
    """The holds as they stand now: kept books whose time is over already passed on (in a
    transaction that is never committed; the server commits it within a second anyway)."""
    view_txn = Txn(store().snapshot())
    circulation.expire_holds(view_txn, now(), rules())
    return view_txn


@bp.get("/holds")
@documented(query=HoldQuerySchema, response=HoldListSchema, errors=(422,), auth="member")
def list_holds() -> Response:
    """Holds: a member's own; every hold for a librarian."""
    actor = signed_in()
    args = hold_query_schema.load(request.args.to_dict())
    if not members.at_least(actor, "librarian") and args.setdefault("member_id", actor["id"]) != actor["id"]:
        raise Forbidden("Only librarians can see other members' holds")
    current = holds_now()
    places = circulation.positions(current)
    if "member_id" in args:
        chosen = current.where("holds", "member_id", args["member_id"])
    else:
        chosen = [hold for _, hold in current.items("holds")]
    if "book_id" in args:
        chosen = [hold for hold in chosen if hold["book_id"] == args["book_id"]]
    wanted = args.get("status")
    if wanted == "active":
        chosen = [hold for hold in chosen if hold["status"] in circulation.ACTIVE_HOLDS]
    elif wanted:
        chosen = [hold for hold in chosen if hold["status"] == wanted]
    return paginated(
        "holds", chosen, args["page"], args["limit"], lambda hold: circulation.public_hold(hold, places.get(hold["id"]))
    )


@bp.get("/holds/<id:hold_id>")
@documented(response=HoldSchema, errors=(404,), auth="member")
def get_hold(hold_id: int) -> Response:
    """One hold (your own, or any for a librarian)."""
    actor = signed_in()
    current = holds_now()
    hold = current.get("holds", hold_id)
    if hold is None:
        raise NotFound("Hold not found")
    if hold["member_id"] != actor["id"] and not members.at_least(actor, "librarian"):
        raise Forbidden("Only librarians can see other members' holds")
    body = circulation.public_hold(hold, circulation.positions(current).get(hold_id))
    return private(orjson.dumps(body))


@bp.delete("/holds/<id:hold_id>")
@documented(response=HoldSchema, errors=(404, 409), auth="member")
def cancel_hold(hold_id: int) -> Response:
    """Cancel a hold (your own, or any for a librarian); a kept book passes to the next in line."""
    actor = signed_in()
    lending, moment = rules(), now()
    hold = store().update(
        lambda txn: circulation.cancel_hold(txn, members.actor_in(txn, actor["id"]), hold_id, moment, lending)
    )
    return json_response(orjson.dumps(circulation.public_hold(hold, None)))


@bp.post("/members/<id:member_id>/payments")
@documented(
    body=PaymentSchema, response=PaymentResultSchema, status=201, errors=(400, 404, 409, 415, 422), auth="librarian"
)
def record_payment(member_id: int) -> Response:
    """Record what a member paid against their fines."""
    actor = signed_in("librarian")
    data = payment_schema.load(json_body())
    amount = circulation.cents(data["amount"])
    lending, moment = rules(), now()
    payment, still_due = store().update(
        lambda txn: circulation.pay(txn, members.actor_in(txn, actor["id"]), member_id, amount, moment, lending)
    )
    body = {**payment, "fines_due": circulation.money(still_due)}
    return json_response(orjson.dumps(body), 201)
