"""The shape of each collection's records, as the data files must hold them.

The store checks every record of a collection file it reads (at start-up, and when a person saves
the file while the server runs) with :func:`problem`. A file whose record breaks these rules is
refused like a file that is not JSON: the server keeps what it had, writes to that collection answer
503 naming the file, line and field, and the file is left as the person wrote it.

Only the fields the application reads are checked; a field a person adds is kept and ignored.
"""

from __future__ import annotations

from typing import Any

COLLECTIONS = ("books", "members", "loans", "holds", "payments", "logins", "library")
"""One JSON file each in the data directory."""

TEXT = (str,)
OPTIONAL_TEXT = (str, type(None))
WHOLE = (int,)
OPTIONAL_WHOLE = (int, type(None))

# collection -> field -> (the types it may have, whether it must be present and not empty)
RULES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "books": {
        "title": (TEXT, True),
        "author": (TEXT, True),
        "genre": (OPTIONAL_TEXT, False),
        "publisher": (OPTIONAL_TEXT, False),
        "publication_year": (OPTIONAL_WHOLE, False),
        "isbn": (OPTIONAL_TEXT, False),
        "cover_url": (OPTIONAL_TEXT, False),
        "document_url": (OPTIONAL_TEXT, False),
        "created_at": (OPTIONAL_TEXT, False),
        "updated_at": (OPTIONAL_TEXT, False),
    },
    "members": {
        "email": (TEXT, True),
        "first_name": (TEXT, True),
        "last_name": (TEXT, True),
        "role": (TEXT, True),
        "password_hash": (OPTIONAL_TEXT, False),
        "token_version": (OPTIONAL_WHOLE, False),
        "created_at": (OPTIONAL_TEXT, False),
        "updated_at": (OPTIONAL_TEXT, False),
    },
    "loans": {
        "book_id": (WHOLE, True),
        "member_id": (WHOLE, True),
        "borrowed_at": (TEXT, True),
        "due_at": (TEXT, True),
        "days": (OPTIONAL_WHOLE, False),
        "renewals": (OPTIONAL_WHOLE, False),
        "returned_at": (OPTIONAL_TEXT, False),
    },
    "holds": {
        "book_id": (WHOLE, True),
        "member_id": (WHOLE, True),
        "status": (TEXT, True),
        "created_at": (TEXT, True),
        "ready_at": (OPTIONAL_TEXT, False),
        "expires_at": (OPTIONAL_TEXT, False),
        "closed_at": (OPTIONAL_TEXT, False),
    },
    "payments": {
        "member_id": (WHOLE, True),
        "paid_at": (TEXT, True),
    },
    "logins": {
        "key": (TEXT, True),
        "failures": ((list,), False),
        "locked_until": (OPTIONAL_TEXT, False),
        "expires_at": (OPTIONAL_TEXT, False),
    },
    # one record: the identity tokens name as issuer and audience, and their generation
    "library": {
        "identity": (TEXT, True),
        "generation": (WHOLE, True),
    },
}
ROLES = ("member", "librarian", "admin")
HOLD_STATUSES = ("waiting", "ready", "fulfilled", "cancelled", "expired")
TYPE_NAMES = {str: "text", int: "a whole number", type(None): "null", list: "a list"}


def problem(collection: str, record: dict[str, Any]) -> str | None:
    """What is wrong with ``record`` of ``collection`` (naming the field), or None."""
    for name, (types, required) in RULES.get(collection, {}).items():
        value = record.get(name)
        if name not in record or value is None:
            if required:
                return f'"{name}" is missing'
            continue
        # bool is an int to Python, never to this file's readers
        if type(value) not in types:
            wanted = " or ".join(TYPE_NAMES[t] for t in types if t is not type(None))
            return f'"{name}" must be {wanted}, not {type(value).__name__} {_show(value)}'
        if required and types is TEXT and not value.strip():
            return f'"{name}" must not be empty'
    if collection == "members" and record["role"] not in ROLES:
        return f'"role" must be one of {", ".join(ROLES)}, not {_show(record["role"])}'
    if collection == "library" and (record["generation"] < 1 or len(record["identity"].strip()) < 16):
        return '"generation" must be 1 or more and "identity" at least 16 characters'
    if collection == "holds" and record["status"] not in HOLD_STATUSES:
        return f'"status" must be one of {", ".join(HOLD_STATUSES)}, not {_show(record["status"])}'
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
