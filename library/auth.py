"""Sign-in: password hashes, the signing secret, bearer tokens and the login lockout.

No Flask here. Passwords are hashed with argon2id at OWASP's recommended minimum (19 MiB of memory,
2 passes, 1 lane: about 50 ms on a small machine, and little enough memory that a burst of sign-ins
cannot exhaust a worker). Tokens are HS256 JWTs, and nothing but HS256 is accepted. The lockout
lives in the store (collection ``logins``), so every worker sees the same count.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import argon2
import jwt

from library.errors import LockedOut
from storage import Snapshot, Txn, journal

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
SECRET_FILE = "secret.key"
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)

hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


# -- passwords -------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return hasher.hash(password)


_dummy_hash: str | None = None


def check_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``. Without a hash (an unknown email, or a member
    enrolled without a password) the same work is done against a dummy hash, so the answer takes
    as long either way."""
    global _dummy_hash
    if stored_hash is None:
        if _dummy_hash is None:
            _dummy_hash = hasher.hash(secrets.token_hex(16))
        stored_hash = _dummy_hash
        real = False
    else:
        real = True
    try:
        return hasher.verify(stored_hash, password) and real
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


def needs_rehash(stored_hash: str) -> bool:
    try:
        return hasher.check_needs_rehash(stored_hash)
    except argon2.exceptions.InvalidHashError:
        return False


# -- the signing secret ----------------------------------------------------------------------------


class SecretError(RuntimeError):
    """The configured secret cannot be used."""


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The key tokens are signed with: ``configured`` when set, else the one kept in the data
    directory, created there by whichever process needs it first (all workers then share it).

    :raises SecretError: when the configured secret is shorter than 32 bytes.
    """
    if configured:
        key = configured.encode()
        if len(key) < MIN_SECRET_BYTES:
            raise SecretError(
                f"LIBRARY_SECRET_KEY is {len(key)} bytes; it must be at least {MIN_SECRET_BYTES} "
                '(python -c "import secrets; print(secrets.token_urlsafe(48))" makes one)'
            )
        return key
    path = data_dir / SECRET_FILE
    if not path.exists():
        # Written whole under another name, then linked into place: a process that loses the race
        # reads the winner's key, never a half-written file.
        candidate, _ = journal.write_temp(path, [secrets.token_urlsafe(48).encode() + b"\n"])
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink(missing_ok=True)
        journal.fsync_dir(data_dir)
    key = path.read_bytes().strip()
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(f"{path} holds fewer than {MIN_SECRET_BYTES} bytes; delete it to have a new one made")
    return key


# -- tokens ----------------------------------------------------------------------------------------

LIBRARY = "library"
"""The collection holding this library's one record: its ``identity``, random and made with
the library, and its ``generation``, which a restore and "sign everyone out" move on. A token names
both (``iss``/``aud`` and ``gen``), so a token of another library that shares the signing key, or
of this one before a restore, signs nobody in. Kept in the store, not beside the key: every worker
sees a new generation with the next snapshot, and any ``Store`` keeps it as it keeps members."""


class TokenError(Exception):
    """A bearer token that does not sign anybody in; the message says why."""


def library_of(source: Snapshot | Txn) -> dict[str, Any] | None:
    """This library's identity record (the collection's first), or None before
    :func:`ensure_library` made it."""
    found = source.items(LIBRARY) if isinstance(source, Txn) else source.records(LIBRARY).items()
    return next((record for _, record in found), None)


def ensure_library(txn: Txn) -> dict[str, Any]:
    """The identity record, made (random) the first time a library starts."""
    return library_of(txn) or txn.insert(LIBRARY, new_library())


def new_library() -> dict[str, Any]:
    return {"identity": secrets.token_urlsafe(18), "generation": 1}


def sign_everyone_out(txn: Txn) -> dict[str, Any]:
    """Move the generation on: every token issued before stops working."""
    current = ensure_library(txn)
    return txn.put(LIBRARY, {**current, "generation": current["generation"] + 1})


def issue_token(
    secret: bytes, member: Mapping[str, Any], ttl: int, library: Mapping[str, Any], now: datetime | None = None
) -> str:
    """A signed token for ``member`` of ``library`` (its identity record), valid for ``ttl`` seconds."""
    issued = now or datetime.now(UTC)
    claims = {
        "iss": library["identity"],
        "aud": library["identity"],
        "gen": library["generation"],
        "sub": str(member["id"]),
        "ver": member.get("token_version", 0),
        "role": member["role"],  # for the client's information only: the store's role is what counts
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl)).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class Claims:
    member_id: int
    version: int
    generation: int


def _whole(value: Any) -> bool:
    return type(value) is int


VERIFIED_KEPT = 4096
"""How many verified tokens each process remembers (a token is checked once, then looked up)."""
_verified: dict[tuple[bytes, str, str, int | None], tuple[float, Claims]] = {}


def read_token(secret: bytes, token: str, library: Mapping[str, Any], max_ttl: int | None = None) -> Claims:
    """The member id, token version and generation a token carries, after checking its signature,
    expiry, and that ``library`` (its identity record) issued it.

    A token that passed once is remembered with its expiry: signature and claims cannot change
    for the same text and key, so later requests only check the expiry and the generation.

    :param max_ttl: the longest lifetime a token may claim (``exp`` - ``iat``), in seconds.
    :raises TokenError: when the token is malformed, not HS256, signed with another key, expired,
        issued by another library or for another, missing a claim, holding a claim of the wrong
        type, or claiming a lifetime past ``max_ttl``.
    """
    key = (secret, token, str(library["identity"]), max_ttl)
    known = _verified.get(key)
    if known is None:
        known = _verify(secret, token, library, max_ttl)
        if len(_verified) >= VERIFIED_KEPT:
            _verified.clear()
        _verified[key] = known
    expires, claims = known
    if expires <= datetime.now(UTC).timestamp():  # as PyJWT: expired from the second of ``exp``
        raise TokenError("The token has expired; sign in again")
    if claims.generation != library["generation"]:
        raise TokenError("The token is no longer valid; sign in again")
    return claims


def _verify(secret: bytes, token: str, library: Mapping[str, Any], max_ttl: int | None) -> tuple[float, Claims]:
    """:func:`read_token`'s checks that hold for good once passed: the token's expiry and claims."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=library["identity"],
            audience=library["identity"],
            options={"require": ["exp", "iat", "sub", "ver", "iss", "aud", "gen"], "strict_aud": True},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("The token has expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise TokenError("The token is not valid; sign in again") from None
    sub, ver, gen, exp, iat = (claims[k] for k in ("sub", "ver", "gen", "exp", "iat"))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat))
    if not numbers or (max_ttl is not None and exp - iat > max_ttl):
        raise TokenError("The token is not valid; sign in again")
    if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and _whole(ver) and _whole(gen)):
        raise TokenError("The token is not valid; sign in again")
    return float(int(exp)), Claims(int(sub), ver, gen)


# -- the lockout -----------------------------------------------------------------------------------


def email_key(secret: bytes, email: str) -> str:
    """What the lockout knows of an email: a keyed digest, so ``logins.json`` does not keep the
    addresses (or the passwords people type into the email box by mistake)."""
    folded = unicodedata.normalize("NFC", email).strip().lower().encode()
    return hmac.new(secret, b"login:" + folded, hashlib.sha256).hexdigest()[:32]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _moment(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def begin_attempt(txn: Txn, key: str, now: datetime) -> int | None:
    """Count a sign-in attempt for ``key`` as a failure before the password is checked (so that
    concurrent attempts cannot guess more than :data:`MAX_FAILURES` times); :func:`succeeded`
    undoes it. Returns the id of the lockout record. A few records that no longer matter are
    dropped each time, so the collection holds only the last 15 minutes' emails.

    :raises LockedOut: when the email is locked.
    """
    now_stamp = _stamp(now)
    record = _find(txn, key)
    for rid in _stale(txn, now_stamp, limit=20):
        if record is not None and rid == record["id"]:
            record = None
        txn.delete("logins", rid)
    if record is not None and record.get("locked_until") and record["locked_until"] > now_stamp:
        until = _moment(record["locked_until"])
        raise LockedOut(math.ceil((until - now).total_seconds()), until)
    window_start = _stamp(now - LOCKOUT)
    failures = [f for f in (record or {}).get("failures", []) if f > window_start]
    failures.append(now_stamp)
    locked_until = _stamp(now + LOCKOUT) if len(failures) >= MAX_FAILURES else None
    new = {
        "key": key,
        "failures": [] if locked_until else failures,
        "locked_until": locked_until,
        "expires_at": _stamp(now + LOCKOUT),  # nothing of it matters after this
    }
    if record is None:
        return txn.insert("logins", new)["id"]
    txn.put("logins", {"id": record["id"], **new})
    return record["id"]


def _find(txn: Txn, key: str) -> dict[str, Any] | None:
    """The lockout record of ``key``: through an index of the snapshot (and the transaction's own
    changes), not a scan, so that a sign-in stays cheap however many emails are being tried."""
    for rec in txn.pending("logins").values():
        if rec is not None and rec["key"] == key:
            return rec
    snap = txn.snapshot
    index = snap.memo("logins_by_key", lambda: {rec["key"]: rid for rid, rec in snap.records("logins").items()})
    rid = index.get(key)
    rec = txn.get("logins", rid) if rid is not None else None
    return rec if rec is not None and rec["key"] == key else None


def _stale(txn: Txn, now_stamp: str, limit: int) -> list[int]:
    """Up to ``limit`` records whose time is over, oldest first (ISO stamps compare as text)."""
    snap = txn.snapshot
    ordered = snap.memo(
        "logins_by_expiry",
        lambda: sorted((rec.get("expires_at", ""), rid) for rid, rec in snap.records("logins").items()),
    )
    found = []
    for expires_at, rid in ordered:
        if expires_at > now_stamp or len(found) >= limit:
            break
        current = txn.get("logins", rid)
        if current is not None and current.get("expires_at", "") <= now_stamp:
            found.append(rid)
    return found


def succeeded(txn: Txn, record_id: int) -> None:
    """A sign-in succeeded before the lockout: forget the failures."""
    if txn.get("logins", record_id) is not None:
        txn.delete("logins", record_id)
