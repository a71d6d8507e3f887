"""Members: roles, the public form of a member, and the rules of who may change whom.

Pure Python over :mod:`storage` transactions; no Flask. A member record on disk::

    {"id", "email", "first_name", "last_name", "role", "password_hash", "token_version",
     "created_at", "updated_at"}

``password_hash`` is null for a member enrolled by a librarian (who never signs in); it never
leaves this module's callers in a response. ``token_version`` goes up when the role changes, which
ends every token issued before.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from library.errors import PermissionDenied
from storage import ConflictError, Snapshot, Txn

ROLES = ("member", "librarian", "admin")
"""Each role can do all that the one before it can."""
PUBLIC_FIELDS = ("id", "email", "first_name", "last_name", "role", "created_at", "updated_at")
SORT_FIELDS = ("id", "email", "first_name", "last_name", "role", "created_at")


def rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def at_least(member: Mapping[str, Any], role: str) -> bool:
    return rank(member["role"]) >= rank(role)


def email_key(email: str) -> str:
    """Emails are unique case-insensitively, and in NFC (the form the schemas store)."""
    return unicodedata.normalize("NFC", email).strip().lower()


def by_email(snap: Snapshot) -> dict[str, int]:
    """Member ids by folded email, computed once per snapshot."""
    return snap.memo(
        "members_by_email", lambda: {email_key(m["email"]): mid for mid, m in snap.records("members").items()}
    )


def find_by_email(txn: Txn, email: str) -> dict[str, Any] | None:
    """The member with ``email`` as the transaction sees it (its own changes included)."""
    wanted = email_key(email)
    for _, member in txn.items("members"):
        if email_key(member["email"]) == wanted:
            return member
    return None


def public_member(record: Mapping[str, Any]) -> dict[str, Any]:
    """A member as the API shows it: never the hash or the token version."""
    return {key: record.get(key) for key in PUBLIC_FIELDS}


def open_loans_by_member(snap: Snapshot) -> dict[int, list[dict[str, Any]]]:
    """Each member's open loans as member listings show them, computed once per snapshot."""

    def build() -> dict[int, list[dict[str, Any]]]:
        books = snap.records("books")
        found: dict[int, list[dict[str, Any]]] = {}
        for loan in snap.records("loans").values():
            if loan.get("returned_at") is None:
                book = books.get(loan["book_id"]) or {}
                brief = {
                    "loan_id": loan["id"],
                    "book_id": loan["book_id"],
                    "title": book.get("title"),
                    "due_at": loan["due_at"],
                }
                found.setdefault(loan["member_id"], []).append(brief)
        return found

    return snap.memo("loans_by_member", build)


def listing(snap: Snapshot, record: Mapping[str, Any], fines_due: float = 0.0) -> dict[str, Any]:
    """A member with their open loans and the fines they owe."""
    member = public_member(record)
    member["loans"] = open_loans_by_member(snap).get(record["id"], [])
    member["fines_due"] = fines_due
    return member


def listing_in(txn: Txn, record: Mapping[str, Any], fines_due: float = 0.0) -> dict[str, Any]:
    """:func:`listing` as a transaction sees it (the same bytes as from the snapshot it commits)."""
    member = public_member(record)
    loans = []
    for loan in txn.where("loans", "member_id", record["id"]):
        if loan.get("returned_at") is None:
            book = txn.get("books", loan["book_id"]) or {}
            loans.append(
                {
                    "loan_id": loan["id"],
                    "book_id": loan["book_id"],
                    "title": book.get("title"),
                    "due_at": loan["due_at"],
                }
            )
    member["loans"] = loans
    member["fines_due"] = fines_due
    return member


# -- writes ----------------------------------------------------------------------------------------


def create(
    txn: Txn, data: Mapping[str, Any], now: str, password_hash: str | None = None, role: str = "member"
) -> dict[str, Any]:
    """Register (with a password) or enrol (without) a member.

    :raises ConflictError: when the email is already taken (case-insensitively).
    """
    if find_by_email(txn, data["email"]) is not None:
        raise ConflictError("A member with this email already exists")
    record = {
        "email": data["email"],
        "first_name": data["first_name"],
        "last_name": data["last_name"],
        "role": role,
        "password_hash": password_hash,
        "token_version": 0,
        "created_at": now,
        "updated_at": now,
    }
    return txn.insert("members", record)


def make_admin(
    txn: Txn, email: str, password_hash: str | None, now: str, names: Mapping[str, str]
) -> tuple[dict[str, Any], bool]:
    """The ``create-admin`` command: a new admin (with ``names``), or an existing member made
    admin (and given the password when one is passed). Returns the record and whether it is new."""
    existing = find_by_email(txn, email)
    if existing is None:
        data = {"email": email, **names}
        return create(txn, data, now, password_hash, role="admin"), True
    changed = {**existing, "role": "admin", "updated_at": now}
    if password_hash is not None:
        changed["password_hash"] = password_hash
    if changed["role"] != existing["role"] or password_hash is not None:
        changed["token_version"] = existing.get("token_version", 0) + 1
    txn.put("members", changed)
    return changed, False


def actor_in(txn: Txn, actor_id: int) -> dict[str, Any]:
    """The signed-in member as the transaction sees them (a role changed meanwhile counts).

    :raises PermissionDenied: when they are gone.
    """
    actor = txn.get("members", actor_id)
    if actor is None:
        raise PermissionDenied("Your account no longer exists")
    return actor


def check_may_see(actor: Mapping[str, Any], member_id: int) -> None:
    """Self, or a librarian or admin.

    :raises PermissionDenied: otherwise.
    """
    if actor["id"] != member_id and not at_least(actor, "librarian"):
        raise PermissionDenied("Only librarians can see other members' records")


def patch(txn: Txn, actor_id: int, member_id: int, data: Mapping[str, Any], now: str) -> dict[str, Any]:
    """``PATCH /members/<id>``: names and email (self; a librarian for members below them; an
    admin for anyone), the role (an admin only, never leaving the library without an admin).

    :raises NotFoundError: when there is no such member.
    :raises PermissionDenied: when the actor may not make this change.
    :raises ConflictError: for a taken email or the last admin's demotion.
    """
    actor = actor_in(txn, actor_id)
    check_may_see(actor, member_id)
    target = txn.get_or_fail("members", member_id, "Member not found")
    if actor["id"] != member_id and actor["role"] != "admin" and rank(actor["role"]) <= rank(target["role"]):
        raise PermissionDenied("Only an admin can change the record of a librarian or admin")
    if "role" in data and actor["role"] != "admin":
        raise PermissionDenied("Only an admin can change a role")
    if "email" in data and not at_least(actor, "librarian"):
        raise PermissionDenied("Only a librarian can change the email a member signs in with")
    new = {**target, **data}
    if new == target:
        return target
    new_email = "email" in data and email_key(data["email"]) != email_key(target["email"])
    if new_email and find_by_email(txn, data["email"]) is not None:
        raise ConflictError("A member with this email already exists")
    if new["role"] != target["role"]:
        if target["role"] == "admin":
            _keep_an_admin(txn, member_id)
        new["token_version"] = target.get("token_version", 0) + 1
    new["updated_at"] = now
    txn.put("members", new)
    return new


def delete(txn: Txn, actor_id: int, member_id: int) -> dict[str, Any]:
    """``DELETE /members/<id>``: an admin's, refused while the member has books out.

    :raises PermissionDenied: when the actor is not an admin.
    :raises NotFoundError: when there is no such member.
    :raises ConflictError: with open loans, or for the last admin.
    """
    actor = actor_in(txn, actor_id)
    if actor["role"] != "admin":
        raise PermissionDenied("Only an admin can delete members")
    target = txn.get_or_fail("members", member_id, "Member not found")
    out = sum(1 for loan in txn.where("loans", "member_id", member_id) if loan.get("returned_at") is None)
    if out:
        raise ConflictError(
            f"The member has {out} book{'s' if out > 1 else ''} on loan; "
            "they can be deleted once every book is returned"
        )
    if target["role"] == "admin":
        _keep_an_admin(txn, member_id)
    return txn.delete("members", member_id)


def _keep_an_admin(txn: Txn, leaving: int) -> None:
    if not any(m["role"] == "admin" and mid != leaving for mid, m in txn.items("members")):
        raise ConflictError("The library must keep at least one admin")


def select(snap: Snapshot, sort_by: str = "id", role: str | None = None, q: str | None = None) -> list[dict[str, Any]]:
    """Members matching ``role`` and every word of ``q`` (in the names or email), sorted by
    ``sort_by`` (``-field`` descending; text case-insensitively; ties by ascending id)."""
    records = list(snap.records("members").values())
    if role is not None:
        records = [m for m in records if m["role"] == role]
    words = [w.casefold() for w in (q or "").split()]
    if words:
        texts = {m["id"]: f"{m['first_name']} {m['last_name']} {m['email']}".casefold() for m in records}
        records = [m for m in records if all(w in texts[m["id"]] for w in words)]
    field = sort_by.lstrip("-")
    if field != "id":

        def key(m: Mapping[str, Any]) -> Any:
            value = m.get(field)
            if field == "role":
                return rank(value)
            return value.casefold() if isinstance(value, str) else ""

        records.sort(key=key, reverse=sort_by.startswith("-"))  # stable: ties keep ascending id
    elif sort_by.startswith("-"):
        records.reverse()
    return records
