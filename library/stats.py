"""The librarian's overview: counts, loans per week, the most borrowed books and the overdue now,
computed from one snapshot (kept with it: a page that polls the overview costs one pass per change)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from library import circulation
from storage import Snapshot

WEEKS = 12
"""Weeks that ``loans_per_week`` covers, the current one included."""

MOST_BORROWED = 10
OVERDUE_SHOWN = 50


def overview(snap: Snapshot, now: datetime, rules: circulation.Rules) -> dict[str, Any]:
    """The overview of the library at ``now``.

    :returns: ``books``, ``members``, ``active_loans`` (open, overdue ones included),
        ``overdue_now``, ``holds_waiting`` (waiting, not yet kept); ``loans_per_week`` (the last
        :data:`WEEKS` weeks by their Monday, oldest first, empty weeks as 0); ``most_borrowed``
        (the :data:`MOST_BORROWED` books lent most often, of all time, still in the catalogue);
        ``overdue`` (the :data:`OVERDUE_SHOWN` most overdue open loans).
    """
    counts = snap.memo(("stats", "counts"), lambda: _counts(snap))
    late = circulation.overdue(snap, now, rules)
    this_monday = now.date() - timedelta(days=now.weekday())
    weeks = [this_monday - timedelta(weeks=back) for back in range(WEEKS - 1, -1, -1)]
    per_week = counts["per_week"]
    return {
        "books": snap.count("books"),
        "members": snap.count("members"),
        "active_loans": counts["open"],
        "overdue_now": len(late),
        "holds_waiting": counts["waiting"],
        "loans_per_week": [{"week": week.isoformat(), "loans": per_week.get(week, 0)} for week in weeks],
        "most_borrowed": counts["most_borrowed"],
        "overdue": [
            {
                "loan_id": row["loan_id"],
                "book_id": row["book_id"],
                "title": row["title"],
                "member_id": row["member_id"],
                "member_name": row["member"],
                "due_at": row["due_at"],
                "days_overdue": row["days_late"],
            }
            for row in late[:OVERDUE_SHOWN]
        ],
    }


def _counts(snap: Snapshot) -> dict[str, Any]:
    """What does not depend on the time: open loans, loans by the Monday of their week, the most
    borrowed books, waiting holds."""
    per_week: Counter[Any] = Counter()
    per_book: Counter[int] = Counter()
    still_open = 0
    for loan in snap.records("loans").values():
        day = circulation.parse_time(loan["borrowed_at"]).date()
        per_week[day - timedelta(days=day.weekday())] += 1
        per_book[loan["book_id"]] += 1
        if loan.get("returned_at") is None:
            still_open += 1
    books = snap.records("books")
    ranked = sorted((item for item in per_book.items() if item[0] in books), key=lambda item: (-item[1], item[0]))
    most = [{"book_id": bid, "title": books[bid]["title"], "loans": n} for bid, n in ranked[:MOST_BORROWED]]
    waiting = sum(1 for hold in snap.records("holds").values() if hold["status"] == "waiting")
    return {"per_week": per_week, "most_borrowed": most, "open": still_open, "waiting": waiting}
