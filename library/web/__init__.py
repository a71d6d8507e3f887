"""The web layer: one blueprint per resource. Views translate HTTP and call the domain; the
shared helpers are in :mod:`library.web.http`, every error's shape in :mod:`library.web.problems`."""

from __future__ import annotations

from flask import Flask

from library.web import books, imports, lending, live, members, service, stats


def register_blueprints(app: Flask) -> None:
    """Mount every resource's routes on ``app``."""
    for module in (books, members, lending, imports, stats, live, service):
        app.register_blueprint(module.bp)
