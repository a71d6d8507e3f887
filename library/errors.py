"""The one base of every refusal the domain makes: it carries its HTTP status and the sentence
that says why, and :mod:`library.web.problems` turns any of them into a problem document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from werkzeug.datastructures import WWWAuthenticate


class DomainError(Exception):
    """A request the rules refuse. ``status`` is its HTTP status; the message is the problem's
    ``detail``; ``headers`` go with the answer."""

    status = 400

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status

    def headers(self) -> list[tuple[str, str]]:
        return []


class PermissionDenied(DomainError):
    """The signed-in member's role does not allow this."""

    status = 403


class TokenEnded(DomainError):
    """A bearer token that stopped being valid (everyone signed out, a restore) while its request
    was on its way to the write; the client signs in again."""

    status = 401

    def headers(self) -> list[tuple[str, str]]:  # the challenge signing in gives for a token that ended
        challenge = WWWAuthenticate("bearer", {"realm": "library_api", "error": "invalid_token"})
        return [("WWW-Authenticate", challenge.to_header())]


class LockedOut(DomainError):
    """Too many failed sign-ins for one email; ``retry_after`` is in seconds, ``until`` the moment
    (UTC) the lockout ends."""

    status = 429

    def __init__(self, retry_after: int, until: datetime | None = None) -> None:
        until = until or datetime.now(UTC) + timedelta(seconds=retry_after)
        super().__init__(
            f"Too many failed sign-ins for this email; try again after {until:%H:%M:%S} UTC "
            f"({until:%Y-%m-%d}), in {retry_after} seconds"
        )
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class UploadError(DomainError):
    """A file that is refused: too large (413), empty (422) or of a type not taken (415)."""
