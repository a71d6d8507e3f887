"""Circulation: loans, renewals, fines, payments and holds, with the reason for every refusal.

Pure Python over :mod:`storage` transactions; no Flask. Every rule is checked inside the write's
transaction (reading through the ``txn``, so that writers sharing one commit see each other), and
the clock is passed in, so that tests control time.

Records::

    loans     {id, book_id, member_id, borrowed_at, due_at, days, renewals, returned_at, fine}
    holds     {id, book_id, member_id, created_at, status, ready_at, expires_at, closed_at}
    payments  {id, member_id, amount, paid_at, received_by}

A book's availability is never stored: it is out while it has a loan without ``returned_at``, and
``on_hold`` while a hold for it is ``ready`` (kept for the first member in the queue until
``expires_at``). Fines are computed when read from the due date and the return (or now); the fine
of a returned loan is kept on the loan, so changing the rate later does not rewrite history.
Money is handled in cents and shown as numbers with two decimals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from library.errors import PermissionDenied
from library.members import at_least
from storage import ConflictError, Snapshot, Txn

log = logging.getLogger("library_api")
ACTIVE_HOLDS = ("waiting", "ready")
HOLD_STATUSES = ("waiting", "ready", "fulfilled", "cancelled", "expired")
LOAN_STATUSES = ("active", "overdue", "returned")


@dataclass(frozen=True)
class Rules:
    """The library's lending rules (from the ``LIBRARY_*`` settings); money in cents."""

    max_loans: int = 5
    loan_days: int = 14
    max_loan_days: int = 60
    max_renewals: int = 2
    fine_per_day: int = 50
    fine_grace_days: int = 0
    max_fine: int = 2000
    max_fines_due: int = 1000
    hold_days: int = 3


def cents(value: Any) -> int:
    """An amount of money as whole cents.

    :raises ValueError: for anything that is not a non-negative amount with at most 2 decimals.
    """
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount of money") from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"{value!r} is not an amount with at most 2 decimals")
    return int(amount * 100)


def stored_cents(value: Any) -> int:
    """An amount kept in a file as cents, rounded (a hand edit with more decimals still reads)."""
    try:
        return int((Decimal(str(value or 0)) * 100).quantize(Decimal(1)))
    except InvalidOperation:
        log.warning("ignoring an amount that is not a number: %r", value)
        return 0


def money(amount: int) -> float:
    return round(amount / 100, 2)


def show(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"


def parse_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- fines -----------------------------------------------------------------------------------------


def days_late(due_at: str, until: datetime) -> int:
    """Whole UTC calendar days from the due date to ``until`` (0 when not late)."""
    return max(0, (until.astimezone(UTC).date() - parse_time(due_at).date()).days)


def fine_for(loan: Mapping[str, Any], now: datetime, rules: Rules) -> int:
    """The fine of a loan in cents: kept on a returned loan, accruing on an open one."""
    if loan.get("returned_at") is not None:
        return stored_cents(loan.get("fine"))
    return accrued(loan["due_at"], now, rules)


def accrued(due_at: str, until: datetime, rules: Rules) -> int:
    late = days_late(due_at, until)
    if late <= rules.fine_grace_days:
        return 0
    return min(late * rules.fine_per_day, rules.max_fine)


def fines_due(
    loans: Iterable[Mapping[str, Any]], payments: Iterable[Mapping[str, Any]], now: datetime, rules: Rules
) -> int:
    """What a member owes in cents: the fines of their loans less what they paid."""
    owed = sum(fine_for(loan, now, rules) for loan in loans)
    paid = sum(stored_cents(p.get("amount")) for p in payments)
    return max(0, owed - paid)


def member_fines(source: Txn | Snapshot, member_id: int, now: datetime, rules: Rules) -> int:
    """What ``member_id`` owes in cents, as a transaction or a snapshot sees it."""
    if isinstance(source, Txn):
        loans = source.where("loans", "member_id", member_id)
        payments = source.where("payments", "member_id", member_id)
    else:
        loans = _by_member(source, "loans").get(member_id, [])
        payments = _by_member(source, "payments").get(member_id, [])
    return fines_due(loans, payments, now, rules)


def _by_member(snap: Snapshot, collection: str) -> dict[int, list[dict[str, Any]]]:
    """The records of ``collection`` by member id, computed once per snapshot."""

    def build() -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for record in snap.records(collection).values():
            found.setdefault(record["member_id"], []).append(record)
        return found

    return snap.memo(("by_member", collection), build)


# -- the public forms ------------------------------------------------------------------------------


def public_loan(loan: Mapping[str, Any], now: datetime, rules: Rules) -> dict[str, Any]:
    """A loan as the API shows it, with its fine (so far) and its status."""
    if loan.get("returned_at") is not None:
        status = "returned"
    elif parse_time(loan["due_at"]) < now:
        status = "overdue"
    else:
        status = "active"
    return {
        "id": loan["id"],
        "book_id": loan["book_id"],
        "member_id": loan["member_id"],
        "borrowed_at": loan["borrowed_at"],
        "due_at": loan["due_at"],
        "returned_at": loan.get("returned_at"),
        "days": loan["days"],
        "renewals": loan["renewals"],
        "fine": money(fine_for(loan, now, rules)),
        "status": status,
    }


def public_hold(hold: Mapping[str, Any], position: int | None) -> dict[str, Any]:
    return {
        "id": hold["id"],
        "book_id": hold["book_id"],
        "member_id": hold["member_id"],
        "created_at": hold["created_at"],
        "status": hold["status"],
        "position": position,
        "ready_at": hold.get("ready_at"),
        "expires_at": hold.get("expires_at"),
        "closed_at": hold.get("closed_at"),
    }


def queue(txn: Txn, book_id: int) -> list[dict[str, Any]]:
    """The active holds of a book in queue order: the ready one (if any) first, then the waiting
    ones, oldest first."""
    active = [h for h in txn.where("holds", "book_id", book_id) if h["status"] in ACTIVE_HOLDS]
    active.sort(key=lambda h: (h["status"] != "ready", h["created_at"], h["id"]))
    return active


def positions(txn: Txn) -> dict[int, int]:
    """Each active hold's place in its book's queue (1 is first)."""
    by_book: dict[int, list[dict[str, Any]]] = {}
    for _, hold in txn.items("holds"):
        if hold["status"] in ACTIVE_HOLDS:
            by_book.setdefault(hold["book_id"], []).append(hold)
    found = {}
    for holds in by_book.values():
        holds.sort(key=lambda h: (h["status"] != "ready", h["created_at"], h["id"]))
        for place, hold in enumerate(holds, 1):
            found[hold["id"]] = place
    return found


# -- checks ----------------------------------------------------------------------------------------


def open_loan_of(txn: Txn, book_id: int) -> dict[str, Any] | None:
    for loan in txn.where("loans", "book_id", book_id):
        if loan.get("returned_at") is None:
            return loan
    return None


def _may_act_for(actor: Mapping[str, Any], member_id: int, what: str) -> None:
    if actor["id"] != member_id and not at_least(actor, "librarian"):
        raise PermissionDenied(f"Only librarians can {what} for another member")


# -- holds: the queue moves on ---------------------------------------------------------------------


def expire_holds(txn: Txn, now: datetime, rules: Rules, book_id: int | None = None) -> int:
    """End every kept (``ready``) hold whose time is over, passing the book to the next member in
    its queue (whose keep starts when the previous one ended). Returns how many expired."""
    expired = 0
    books = {book_id} if book_id is not None else {h["book_id"] for h in txn.where("holds", "status", "ready")}
    for bid in books:
        _repair(txn, bid, now, rules)
        while True:
            line = queue(txn, bid)
            if not line or line[0]["status"] != "ready" or parse_time(line[0]["expires_at"]) > now:
                break
            ended = line[0]
            txn.put("holds", {**ended, "status": "expired", "closed_at": ended["expires_at"]})
            expired += 1
            _pass_on(txn, line[1:], parse_time(ended["expires_at"]), rules)
    return expired


def _repair(txn: Txn, book_id: int, now: datetime, rules: Rules) -> None:
    """A book neither out nor kept while members wait for it (its keeper's hold was ended by a
    delete, or the files were edited by hand): keep it for the first of them from now."""
    line = queue(txn, book_id)
    if line and line[0]["status"] == "waiting" and open_loan_of(txn, book_id) is None:
        _pass_on(txn, line, now, rules)


def next_expiry(snap: Snapshot) -> datetime | None:
    """When the first kept hold runs out (None when no book is kept)."""

    def build() -> datetime | None:
        ends = [h["expires_at"] for h in snap.records("holds").values() if h["status"] == "ready"]
        return parse_time(min(ends)) if ends else None

    return snap.memo("next_expiry", build)


def _pass_on(txn: Txn, waiting: list[dict[str, Any]], start: datetime, rules: Rules) -> None:
    """Keep the book for the first of ``waiting`` from ``start``."""
    if waiting:
        first = waiting[0]
        until = start + timedelta(days=rules.hold_days)
        txn.put("holds", {**first, "status": "ready", "ready_at": stamp(start), "expires_at": stamp(until)})


# -- loans -----------------------------------------------------------------------------------------


def borrow(
    txn: Txn,
    actor: Mapping[str, Any],
    book_id: int,
    member_id: int,
    days: int,
    borrowed_at: datetime | None,
    now: datetime,
    rules: Rules,
) -> dict[str, Any]:
    """Lend a book: to the actor, or (a librarian) to ``member_id``, possibly backdated.

    :raises NotFoundError: for a missing book or member.
    :raises PermissionDenied: when a member borrows for someone else.
    :raises ConflictError: with the rule that refused it.
    """
    _may_act_for(actor, member_id, "lend books")
    txn.get_or_fail("books", book_id, "Book not found")
    txn.get_or_fail("members", member_id, "Member not found")
    expire_holds(txn, now, rules, book_id)
    loan = open_loan_of(txn, book_id)
    if loan is not None:
        if loan["member_id"] == member_id:
            raise ConflictError("The member already has this book on loan")
        raise ConflictError(f"The book is already on loan, due back {loan['due_at'][:10]}")
    line = queue(txn, book_id)
    kept = line[0] if line and line[0]["status"] == "ready" else None
    if kept is not None and kept["member_id"] != member_id:
        raise ConflictError(f"The book is kept for a member who placed a hold, until {kept['expires_at'][:10]}")
    out = sum(1 for ln in txn.where("loans", "member_id", member_id) if ln.get("returned_at") is None)
    if out >= rules.max_loans:
        raise ConflictError(f"The member already has {out} books on loan, the most allowed (LIBRARY_MAX_LOANS)")
    owed = member_fines(txn, member_id, now, rules)
    if owed > rules.max_fines_due:
        raise ConflictError(
            f"The member owes {show(owed)} in fines, more than the {show(rules.max_fines_due)} allowed "
            "(LIBRARY_MAX_FINES_DUE); a payment lifts the block"
        )
    start = borrowed_at or now
    record = {
        "book_id": book_id,
        "member_id": member_id,
        "borrowed_at": stamp(start),
        "due_at": stamp(start + timedelta(days=days)),
        "days": days,
        "renewals": 0,
        "returned_at": None,
        "fine": None,
    }
    loan = txn.insert("loans", record)
    for hold in line:
        if hold["member_id"] == member_id:  # kept for them, or (a repaired queue) still waiting
            txn.put("holds", {**hold, "status": "fulfilled", "closed_at": stamp(now)})
    return loan


def give_back(txn: Txn, actor: Mapping[str, Any], book_id: int, now: datetime, rules: Rules) -> dict[str, Any]:
    """Return a book (its borrower, or a librarian): the loan is closed with its fine, and the book
    is kept for the first member waiting for it.

    :raises NotFoundError: for a missing book.
    :raises ConflictError: when the book is not on loan.
    :raises PermissionDenied: for anyone else.
    """
    txn.get_or_fail("books", book_id, "Book not found")
    loan = open_loan_of(txn, book_id)
    if loan is None:
        raise ConflictError("The book is not on loan")
    if loan["member_id"] != actor["id"] and not at_least(actor, "librarian"):
        raise PermissionDenied("Only the borrower or a librarian can return this book")
    closed = {**loan, "returned_at": stamp(now), "fine": money(accrued(loan["due_at"], now, rules))}
    txn.put("loans", closed)
    _pass_on(txn, queue(txn, book_id), now, rules)
    return closed


def renew(txn: Txn, actor: Mapping[str, Any], loan_id: int, now: datetime, rules: Rules) -> dict[str, Any]:
    """Extend a loan by its own period.

    :raises NotFoundError: for a missing loan.
    :raises PermissionDenied: for anyone but its borrower or a librarian.
    :raises ConflictError: when returned, overdue, at the limit, or someone waits for the book.
    """
    loan = txn.get_or_fail("loans", loan_id, "Loan not found")
    if loan["member_id"] != actor["id"] and not at_least(actor, "librarian"):
        raise PermissionDenied("Only the borrower or a librarian can renew this loan")
    if loan.get("returned_at") is not None:
        raise ConflictError("The loan is closed: the book was returned")
    if parse_time(loan["due_at"]) < now:
        raise ConflictError("The loan is overdue; an overdue loan cannot be renewed, only returned")
    if loan["renewals"] >= rules.max_renewals:
        raise ConflictError(f"The loan was renewed {loan['renewals']} times, the most allowed (LIBRARY_MAX_RENEWALS)")
    if any(h["member_id"] != loan["member_id"] for h in queue(txn, loan["book_id"])):
        raise ConflictError("Another member is waiting for this book (a hold), so the loan cannot be renewed")
    due = parse_time(loan["due_at"]) + timedelta(days=loan["days"])
    return txn.put("loans", {**loan, "due_at": stamp(due), "renewals": loan["renewals"] + 1})


# -- holds -----------------------------------------------------------------------------------------


def place_hold(
    txn: Txn, actor: Mapping[str, Any], book_id: int, member_id: int, now: datetime, rules: Rules
) -> tuple[dict[str, Any], int]:
    """Queue a member for a book that is out (or kept for someone else). Returns the hold and its
    position in the queue.

    :raises ConflictError: when the book is available, the member has it, or already waits for it.
    """
    _may_act_for(actor, member_id, "place holds")
    txn.get_or_fail("books", book_id, "Book not found")
    txn.get_or_fail("members", member_id, "Member not found")
    expire_holds(txn, now, rules, book_id)
    loan = open_loan_of(txn, book_id)
    line = queue(txn, book_id)
    if loan is None and not (line and line[0]["status"] == "ready"):
        raise ConflictError("The book is available: borrow it instead of placing a hold")
    if loan is not None and loan["member_id"] == member_id:
        raise ConflictError("The member has this book on loan")
    if any(h["member_id"] == member_id for h in line):
        raise ConflictError("The member already waits for this book")
    hold = txn.insert(
        "holds",
        {
            "book_id": book_id,
            "member_id": member_id,
            "created_at": stamp(now),
            "status": "waiting",
            "ready_at": None,
            "expires_at": None,
            "closed_at": None,
        },
    )
    return hold, len(line) + 1


def cancel_hold(txn: Txn, actor: Mapping[str, Any], hold_id: int, now: datetime, rules: Rules) -> dict[str, Any]:
    """Cancel a hold (its member, or a librarian); a kept book passes to the next in the queue.

    :raises ConflictError: when the hold has already ended.
    """
    hold = txn.get_or_fail("holds", hold_id, "Hold not found")
    if hold["member_id"] != actor["id"] and not at_least(actor, "librarian"):
        raise PermissionDenied("Only the member who placed the hold or a librarian can cancel it")
    expire_holds(txn, now, rules, hold["book_id"])
    hold = txn.get_or_fail("holds", hold_id, "Hold not found")
    if hold["status"] not in ACTIVE_HOLDS:
        raise ConflictError(f"The hold has already ended ({hold['status']})")
    cancelled = txn.put("holds", {**hold, "status": "cancelled", "closed_at": stamp(now)})
    if hold["status"] == "ready":
        _pass_on(txn, queue(txn, hold["book_id"]), now, rules)
    return cancelled


def cancel_all_holds(txn: Txn, now: datetime, rules: Rules, *, member_id: int) -> None:
    """Cancel the active holds of a member who is being deleted; a book kept for them passes to
    the next in its queue."""
    for hold in txn.where("holds", "member_id", member_id):
        if hold["status"] in ACTIVE_HOLDS:
            txn.put("holds", {**hold, "status": "cancelled", "closed_at": stamp(now)})
            if hold["status"] == "ready":
                _pass_on(txn, queue(txn, hold["book_id"]), now, rules)


# -- payments --------------------------------------------------------------------------------------


def pay(
    txn: Txn, actor: Mapping[str, Any], member_id: int, amount: int, now: datetime, rules: Rules
) -> tuple[dict[str, Any], int]:
    """Record a payment against a member's fines. Returns it and what the member still owes.

    :raises ConflictError: when the amount is more than the member owes.
    """
    txn.get_or_fail("members", member_id, "Member not found")
    owed = member_fines(txn, member_id, now, rules)
    if amount > owed:
        raise ConflictError(f"The member owes {show(owed)}; a payment cannot be more than that")
    payment = txn.insert(
        "payments", {"member_id": member_id, "amount": money(amount), "paid_at": stamp(now), "received_by": actor["id"]}
    )
    return payment, owed - amount


# -- the overdue report ----------------------------------------------------------------------------


def overdue(snap: Snapshot, now: datetime, rules: Rules) -> list[dict[str, Any]]:
    """Every open loan past its due date, the latest first."""
    books = snap.records("books")
    people = snap.records("members")
    report = []
    for loan in snap.records("loans").values():
        if loan.get("returned_at") is None and parse_time(loan["due_at"]) < now:
            member = people.get(loan["member_id"]) or {}
            book = books.get(loan["book_id"]) or {}
            report.append(
                {
                    "loan_id": loan["id"],
                    "member_id": loan["member_id"],
                    "member": " ".join(filter(None, (member.get("first_name"), member.get("last_name")))),
                    "email": member.get("email"),
                    "book_id": loan["book_id"],
                    "title": book.get("title"),
                    "due_at": loan["due_at"],
                    "days_late": days_late(loan["due_at"], now),
                    "fine": money(accrued(loan["due_at"], now, rules)),
                }
            )
    report.sort(key=lambda row: (-row["days_late"], row["loan_id"]))
    return report


# -- housekeeping ----------------------------------------------------------------------------------


class Housekeeper:
    """A worker's background thread that ends kept holds when their time is over, so that the
    catalogue (and its live feed) shows the book passing on without anyone writing. Every worker
    runs one; the store's lock makes them agree, and a hold already passed on is left alone."""

    def __init__(self, store: Any, rules: Rules, clock: Any, interval: float = 1.0) -> None:
        self.store, self.rules, self.clock, self.interval = store, rules, clock, interval
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="library-holds", daemon=True).start()

    def run_once(self) -> int:
        """Expire what is due now; returns how many holds ended."""
        moment = self.clock()
        due = next_expiry(self.store.snapshot())
        if due is None or due > moment:
            return 0
        return self.store.update(lambda txn: expire_holds(txn, moment, self.rules))

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # logged; the next round tries again
                log.exception("could not pass on expired holds")
