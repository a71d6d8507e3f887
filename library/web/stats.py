"""The librarian's overview (the page's charts)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from library import stats
from library.context import now, rules, store
from library.schemas import StatsSchema
from library.web.http import documented, private, signed_in

bp = Blueprint("stats", __name__)


@bp.get("/stats")
@documented(response=StatsSchema, auth="librarian")
def get_stats() -> Response:
    """Counts, loans per week, the most borrowed books and the overdue loans now."""
    signed_in("librarian")
    return private(orjson.dumps(stats.overview(store().snapshot(), now(), rules())))
