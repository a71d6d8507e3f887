"""Members and sign-in: register, log in, enrol, read and change members."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import (
    MethodNotAllowed,
    NotFound,
)

from library import auth, books, circulation, members
from library.context import (
    now,
    rules,
    stamp,
    store,
)
from library.errors import PermissionDenied
from library.schemas import (
    EnrolSchema,
    LoginSchema,
    MemberListSchema,
    MemberQuerySchema,
    MemberSchema,
    MessageSchema,
    RegisterSchema,
    TokenSchema,
    enrol_schema,
    login_schema,
    member_patch_schema,
    member_query_schema,
    register_schema,
)
from library.web.http import documented, if_match, json_body, json_response, paginated, private, signed_in, unauthorized
from storage import (
    PreconditionFailedError,
)

bp = Blueprint("members", __name__)


log = logging.getLogger("library_api")


@bp.post("/auth/register")
@documented(body=RegisterSchema, response=MemberSchema, status=201, errors=(400, 403, 409, 415, 422, 429))
def register() -> Response:
    """Become a member who signs in with a password (always with the role ``member``)."""
    if current_app.config["REGISTRATION"] != "open":
        raise PermissionDenied("Registration is closed in this library; ask a librarian to enrol you")
    data = register_schema.load(json_body())
    password_hash = auth.hash_password(data["password"])
    moment = stamp(now())
    member = store().update(lambda txn: members.create(txn, data, moment, password_hash))
    return member_response(member, 201, Location=url_for("members.get_member", member_id=member["id"]))


@bp.post("/auth/login")
@documented(body=LoginSchema, response=TokenSchema, errors=(400, 401, 415, 422, 429))
def login() -> Response:
    """Exchange an email and password for a bearer token. After 5 failures for one email within
    15 minutes, every attempt for it is refused (429) for 15 minutes."""
    data = login_schema.load(json_body())
    secret: bytes = current_app.extensions["library_secret"]
    key = auth.email_key(secret, data["email"])
    moment = now()
    attempt = store().update(lambda txn: auth.begin_attempt(txn, key, moment))
    member_id = members.by_email(store().snapshot()).get(members.email_key(data["email"]))
    member = store().snapshot().get("members", member_id) if member_id is not None else None
    stored_hash = member.get("password_hash") if member is not None else None
    if not auth.check_password(stored_hash, data["password"]):
        raise unauthorized("The email or password is wrong")
    rehashed = auth.hash_password(data["password"]) if auth.needs_rehash(stored_hash) else None

    def reset(txn: Any) -> dict[str, Any] | None:
        auth.succeeded(txn, attempt)
        current = txn.get("members", member_id)
        if current is not None and rehashed and current["password_hash"] == stored_hash:
            current = txn.put("members", {**current, "password_hash": rehashed})
        return current

    current = store().update(reset)
    if current is None or current.get("password_hash") not in (stored_hash, rehashed):
        raise unauthorized("The email or password is wrong")  # deleted or changed meanwhile
    ttl = int(current_app.config["TOKEN_TTL"])
    library = auth.library_of(store().snapshot()) or store().update(auth.ensure_library)
    token = auth.issue_token(secret, current, ttl, library)  # checked by PyJWT against the real clock
    body = {"access_token": token, "token_type": "bearer", "expires_in": ttl}
    return json_response(orjson.dumps(body), **{"Cache-Control": "no-store"})


@bp.post("/auth/sign-out-everyone")
@documented(response=MessageSchema, errors=(), auth="admin")
def sign_out_everyone() -> Response:
    """Make every token issued so far stop working, the caller's own included (admins only): for a
    leaked token or signing key, or after people left. Everyone signs in again."""
    signed_in("admin")
    store().update(auth.sign_everyone_out)
    return json_response(orjson.dumps({"message": "Every token issued so far is no longer valid; sign in again"}))


@bp.post("/members")
@documented(body=EnrolSchema, response=MemberSchema, status=201, errors=(400, 409, 415, 422), auth="librarian")
def enrol_member() -> Response:
    """Enrol a member who will not sign in (a librarian lends to them)."""
    signed_in("librarian")
    data = enrol_schema.load(json_body())
    moment = stamp(now())
    member = store().update(lambda txn: members.create(txn, data, moment))
    return member_response(member, 201, Location=url_for("members.get_member", member_id=member["id"]))


@bp.get("/members")
@documented(query=MemberQuerySchema, response=MemberListSchema, errors=(422,), auth="librarian")
def list_members() -> Response:
    """List members with their open loans and the fines they owe."""
    signed_in("librarian")
    args = member_query_schema.load(request.args.to_dict())
    snap = store().snapshot()
    found = members.select(snap, args["sort_by"], args.get("role"), args.get("q"))
    return paginated("members", found, args["page"], args["limit"], lambda record: member_listing(snap, record))


@bp.get("/members/me")
@documented(response=MemberSchema, errors=(), auth="member")
def get_me() -> Response:
    """The signed-in member."""
    me = signed_in()
    snap = store().snapshot()
    if snap.get("members", me["id"]) is None:  # deleted since the token was checked
        raise unauthorized("The token is no longer valid; sign in again", invalid_token=True)
    return member_conditional(snap, me["id"])


@bp.route("/members/me", methods=["PATCH", "DELETE", "PUT", "POST"])
def not_on_me() -> Response:
    """``/members/me`` is for reading; changes go to ``/members/<id>``."""
    raise MethodNotAllowed(valid_methods=["GET"], description="/members/me is read-only; use /members/<id>")


@bp.get("/members/<id:member_id>")
@documented(response=MemberSchema, errors=(404,), auth="member")
def get_member(member_id: int) -> Response:
    """One member (yourself, or anyone for a librarian)."""
    members.check_may_see(signed_in(), member_id)
    snap = store().snapshot()
    if snap.get("members", member_id) is None:
        raise NotFound("Member not found")
    return member_conditional(snap, member_id)


@bp.patch("/members/<id:member_id>")
@documented(body="MemberPatch", response=MemberSchema, errors=(400, 404, 409, 412, 415, 422), auth="member")
def update_member(member_id: int) -> Response:
    """Change names or email (your own; a librarian's for members), or the role (admins only)."""
    actor = signed_in()
    data = member_patch_schema.load(json_body())
    condition, moment, lending = if_match(), now(), rules()

    def change(txn: Any) -> dict[str, Any]:
        members.check_may_see(members.actor_in(txn, actor["id"]), member_id)
        check_member_etag(txn, member_id, condition, moment, lending)
        return members.patch(txn, actor["id"], member_id, data, stamp(moment))

    return member_response(store().update(change))


@bp.delete("/members/<id:member_id>")
@documented(response=MessageSchema, errors=(404, 409, 412), auth="admin")
def delete_member(member_id: int) -> Response:
    """Delete a member (admins only; not while they have books on loan)."""
    actor = signed_in("admin")
    condition, moment, lending = if_match(), now(), rules()

    def remove(txn: Any) -> None:
        members.actor_in(txn, actor["id"])
        check_member_etag(txn, member_id, condition, moment, lending)
        members.delete(txn, actor["id"], member_id)
        circulation.cancel_all_holds(txn, moment, lending, member_id=member_id)

    store().update(remove)
    return json_response(orjson.dumps({"message": "Member deleted successfully"}))


def member_listing(snap: Any, record: dict[str, Any]) -> dict[str, Any]:
    owed = circulation.member_fines(snap, record["id"], now(), rules())
    return members.listing(snap, record, circulation.money(owed))


def member_conditional(snap: Any, member_id: int) -> Response:
    return private(orjson.dumps(member_listing(snap, snap.get("members", member_id))))


def member_response(record: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """The answer to a write: the member as this request stored them."""
    body = orjson.dumps(member_listing(store().snapshot(), record))
    response = json_response(body, status, **headers)
    response.headers["ETag"] = books.etag_of(body)
    return response


def check_member_etag(txn: Any, member_id: int, condition: Any, moment: datetime, lending: circulation.Rules) -> None:
    """``If-Match`` against the member as the transaction sees them.

    :raises PreconditionFailedError: when it does not match.
    """
    if condition is None or condition.star_tag:
        return
    record = txn.get("members", member_id)
    if record is None:
        return  # the change itself answers 404
    owed = circulation.member_fines(txn, member_id, moment, lending)
    body = orjson.dumps(members.listing_in(txn, record, circulation.money(owed)))
    if not condition.contains(books.etag_of(body).strip('"')):
        raise PreconditionFailedError("The member changed since they were read (If-Match does not match)")
