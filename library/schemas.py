"""marshmallow schemas: what a request may carry, and the shapes the OpenAPI document describes.

Schemas check shape only. Uniqueness and existence are checked by the catalogue inside the
store's lock, where the check and the write cannot be separated.
"""

from __future__ import annotations

import gzip
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates

from library.books import SORT_FIELDS, STATUSES, normalize_isbn
from library.members import ROLES
from library.members import SORT_FIELDS as MEMBER_SORT_FIELDS

TEXT_MAX = 500
Q_MAX = 10_000
"""The longest search: far beyond any real one, short enough that matching it costs little."""
PAGE_RANGE = validate.Range(min=1, max=2**31 - 1, error="Must be between 1 and {max}.")


JOINERS = frozenset("\u200c\u200d")
"""Zero-width (non-)joiners: invisible, but Persian, Hindi or an emoji sequence need them between
characters, so they are let through there."""
HIDDEN = frozenset(("Cc", "Cf", "Cs", "Cn", "Zl", "Zp"))
"""Control characters (NUL, newlines, tabs), format characters (zero-width spaces, bidi overrides,
soft hyphens, byte-order marks), surrogates, unassigned code points and line separators: nothing a
one-line text such as a title, a name or an email needs, and the stuff of look-alikes."""


def hidden_characters(text: str, joiners: bool = True) -> list[str]:
    """The invisible or control characters of ``text``, as ``U+XXXX`` (each once). A joiner counts
    unless ``joiners`` allows it and it stands between two visible characters."""
    if text.isprintable():  # no character of a category Python calls unprintable: none of HIDDEN, no joiner
        return []
    found = set()
    for i, c in enumerate(text):
        if c in JOINERS:
            inside = 0 < i < len(text) - 1 and not text[i - 1].isspace() and not text[i + 1].isspace()
            if joiners and inside and text[i - 1] not in JOINERS and text[i + 1] not in JOINERS:
                continue
            found.add(f"U+{ord(c):04X}")
        elif unicodedata.category(c) in HIDDEN:
            found.add(f"U+{ord(c):04X}")
    return sorted(found)


def check_visible(text: str, joiners: bool = True) -> str:
    """``text`` in NFC (so that the same name typed on two systems is the same), trimmed (spaces,
    tabs and newlines around it).

    :raises ValidationError: when it holds control or invisible characters, or joiners alone.
    """
    text = unicodedata.normalize("NFC", text).strip()  # a newline or tab around it is trimmed, not refused
    hidden = hidden_characters(text, joiners)
    if hidden:
        raise ValidationError(f"Must not contain control or invisible characters ({', '.join(hidden[:5])}).")
    return text


class Text(fields.String):
    """A one-line string in NFC, trimmed, without control or invisible characters; an optional
    one that is empty after trimming is stored as null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        text = check_visible(super()._deserialize(value, attr, data, **kwargs))
        if not text and not self.required:
            return None
        return text

    def _validate(self, value: Any) -> None:
        if value is not None:  # an optional field left empty is null: nothing to check
            super()._validate(value)


class StrictInteger(fields.Integer):
    """An integer that refuses booleans and floats (``1999.0`` is not a year)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class Isbn(fields.String):
    """An ISBN-10 or ISBN-13, hyphens and spaces allowed, stored as its digits after a checksum check."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not text:
            return None
        try:
            return normalize_isbn(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def current_year() -> int:
    return datetime.now(UTC).year


class BookSchema(Schema):
    """A book. Clients write title, author, genre, publisher, publication_year and isbn."""

    class Meta:
        unknown = RAISE
        ordered = True

    id = fields.Integer(dump_only=True)
    title = Text(required=True, validate=validate.Length(min=1, max=TEXT_MAX, error="Must be 1 to {max} characters."))
    author = Text(required=True, validate=validate.Length(min=1, max=TEXT_MAX, error="Must be 1 to {max} characters."))
    genre = Text(allow_none=True, validate=validate.Length(max=TEXT_MAX))
    publisher = Text(allow_none=True, validate=validate.Length(max=TEXT_MAX))
    publication_year = StrictInteger(
        allow_none=True, metadata={"description": "Not after the current year.", "minimum": -5000}
    )
    isbn = Isbn(allow_none=True, metadata={"description": "ISBN-10 or ISBN-13; hyphens and spaces are accepted."})
    status = fields.String(dump_only=True, metadata={"enum": list(STATUSES)})
    due_at = fields.DateTime(dump_only=True, allow_none=True)
    cover_url = fields.String(dump_only=True, allow_none=True)
    document_url = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)

    def load(self, data: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Load, reporting read-only fields (id, status, ...) as such alongside any other error."""
        read_only = [n for n, f in self.fields.items() if f.dump_only and isinstance(data, dict) and n in data]
        if not read_only:
            return super().load(data, **kwargs)
        errors: dict[str, Any] = {name: ["Read-only field."] for name in read_only}
        try:
            super().load({k: v for k, v in data.items() if k not in read_only}, **kwargs)
        except ValidationError as exc:
            errors.update(exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages})
        raise ValidationError(errors)

    @validates("publication_year")
    def year_not_in_future(self, value: int | None, **kwargs: Any) -> None:
        limit = current_year()
        if value is not None and value > limit:
            raise ValidationError(f"Must not be after {limit}.")
        if value is not None and value < -5000:
            raise ValidationError("Must not be before -5000.")


class PageSchema(Schema):
    """What every list answer carries beside its items."""

    total = fields.Integer()
    page = fields.Integer()
    limit = fields.Integer()
    pages = fields.Integer()


class PagedQuerySchema(Schema):
    """``page`` and ``limit``, which every list takes; no unknown parameter."""

    class Meta:
        unknown = RAISE

    page = fields.Integer(load_default=1, validate=PAGE_RANGE)
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100, error="Must be between 1 and 100."))


def sort_by(names: tuple[str, ...] | list[str]) -> fields.String:
    """A ``sort_by`` parameter over ``names``: a field, or -field for descending order."""
    choices = [*names, *(f"-{name}" for name in names)]
    return fields.String(
        load_default="id",
        validate=validate.OneOf(choices, error="Must be one of: {choices}."),
        metadata={"description": "A field, or -field for descending order."},
    )


class BookListSchema(PageSchema):
    """A page of books."""

    books = fields.List(fields.Nested(BookSchema))


class BookQuerySchema(PagedQuerySchema):
    """The query parameters of ``GET /books``."""

    sort_by = sort_by(SORT_FIELDS)
    genre = fields.String()
    author = fields.String()
    publisher = fields.String()
    publication_year = fields.Integer()
    status = fields.String(validate=validate.OneOf(STATUSES, error="Must be one of: {choices}."))
    q = fields.String(
        validate=validate.Length(max=Q_MAX, error="Must be at most {max} characters."),
        metadata={"description": "Words that must all appear in the title, author or ISBN."},
    )

    @pre_load
    def fold_status(self, data: Any, **kwargs: Any) -> Any:
        """Filters are case-insensitive, ``status`` too."""
        if isinstance(data, dict) and isinstance(data.get("status"), str):
            data = {**data, "status": data["status"].lower()}
        return data


class ChangesQuerySchema(Schema):
    """The query parameters of ``GET /changes``."""

    class Meta:
        unknown = RAISE

    since = fields.Integer(load_default=0, validate=validate.Range(min=0, error="Must be 0 or more."))
    limit = fields.Integer(
        load_default=100, validate=validate.Range(min=1, max=1000, error="Must be between 1 and 1000.")
    )


class EventSchema(Schema):
    """One change of the catalogue, as ``/changes`` and ``/ws`` send it."""

    seq = fields.Integer()
    action = fields.String(metadata={"enum": ["created", "updated", "deleted"]})
    book = fields.Nested(BookSchema)


class ChangesSchema(Schema):
    changes = fields.List(fields.Nested(EventSchema))
    last_seq = fields.Integer(metadata={"description": "Pass it as the next since."})


class MessageSchema(Schema):
    message = fields.String()


class ProblemSchema(Schema):
    """An RFC 9457 problem document, the body of every error."""

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class LibrarySchema(Schema):
    """What a page needs to know of the library before anyone signs in."""

    name = fields.String(metadata={"description": "LIBRARY_NAME"})
    registration = fields.String(
        metadata={"enum": ["open", "closed"], "description": "closed: POST /auth/register answers 403"}
    )


class HealthProblemSchema(Schema):
    file = fields.String()
    problem = fields.String()


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok, or degraded while writes are refused (503)"})
    seq = fields.Integer()
    books = fields.Integer()
    problems = fields.List(fields.Nested(HealthProblemSchema), metadata={"description": "what refuses writes"})
    backend = fields.String(metadata={"description": "json (the data directory's files) or postgresql"})
    schema_version = fields.Integer(metadata={"description": "the database's schema version (PostgreSQL)"})


# -- members and sign-in ---------------------------------------------------------------------------

NAME_LENGTH = validate.Length(min=1, max=100, error="Must be 1 to {max} characters.")
PASSWORD_MIN, PASSWORD_MAX = 8, 1000


class Email(fields.Email):
    """An email address in NFC, trimmed, without invisible characters (``kate@example.org`` and
    the same followed by a zero-width space would be two members who look alike)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            value = check_visible(value, joiners=False)  # no script of an address needs them
            if any(c.isspace() for c in value):
                raise ValidationError("Must not contain spaces.")
        return super()._deserialize(value, attr, data, **kwargs)


COMMON_PASSWORDS = Path(__file__).resolve().parent / "common-passwords.txt.gz"


@cache
def common_passwords() -> frozenset[str]:
    """Openwall's list of the most common passwords (``password.lst``, public domain), lower-cased."""
    with gzip.open(COMMON_PASSWORDS, "rt", encoding="utf-8") as lines:
        return frozenset(line.rstrip("\n").lower() for line in lines if not line.startswith("#!comment"))


def check_password(password: str) -> None:
    """Refuse a password that is only spaces, or one of the most common ones (the first tried by
    anyone guessing; NIST SP 800-63B asks for this check rather than rules about character kinds).

    :raises ValidationError: saying which.
    """
    if not password.strip():
        raise ValidationError("Must not be only spaces.")
    if password.lower() in common_passwords() or password.strip().lower() in common_passwords():
        raise ValidationError(
            "Is one of the most common passwords, the first that anyone guessing tries; choose another."
        )


class StrictSchema(Schema):
    """Unknown fields refused; some known ones refused with a sentence saying why."""

    class Meta:
        unknown = RAISE
        ordered = True

    refused: dict[str, str] = {}

    def load(self, data: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        present = [name for name in self.refused if isinstance(data, dict) and name in data]
        if not present:
            return super().load(data, **kwargs)
        errors: dict[str, Any] = {name: [self.refused[name]] for name in present}
        try:
            super().load({k: v for k, v in data.items() if k not in present}, **kwargs)
        except ValidationError as exc:
            errors.update(exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages})
        raise ValidationError(errors)


class EnrolSchema(StrictSchema):
    """A member enrolled by a librarian: they never sign in."""

    refused = {
        "role": "A new member is always a member; an admin can change the role afterwards.",
        "id": "Read-only field.",
        "created_at": "Read-only field.",
        "updated_at": "Read-only field.",
    }

    email = Email(required=True, validate=validate.Length(max=254))
    first_name = Text(required=True, validate=NAME_LENGTH)
    last_name = Text(required=True, validate=NAME_LENGTH)


class RegisterSchema(EnrolSchema):
    """Registration: the new member signs in with ``password``."""

    password = fields.String(
        required=True,
        load_only=True,
        validate=[
            validate.Length(min=PASSWORD_MIN, max=PASSWORD_MAX, error="Must be {min} to {max} characters."),
            check_password,
        ],
    )


class LoginSchema(StrictSchema):
    email = fields.String(required=True, validate=validate.Length(max=1000))

    @pre_load
    def normalise_email(self, data: Any, **kwargs: Any) -> Any:
        """The same NFC form as registration stored (typed on another system, it may differ)."""
        if isinstance(data, dict) and isinstance(data.get("email"), str):
            data = {**data, "email": unicodedata.normalize("NFC", data["email"])}
        return data

    password = fields.String(required=True, load_only=True, validate=validate.Length(max=PASSWORD_MAX))


class TokenSchema(Schema):
    access_token = fields.String()
    token_type = fields.String(metadata={"enum": ["bearer"]})
    expires_in = fields.Integer(metadata={"description": "Seconds until the token expires."})


class MemberPatchSchema(StrictSchema):
    """What ``PATCH /members/<id>`` may change: names and email; the role (admins only)."""

    refused = {
        "password": "Passwords are not changed here.",
        "id": "Read-only field.",
        "created_at": "Read-only field.",
        "updated_at": "Read-only field.",
    }

    email = Email(validate=validate.Length(max=254))
    first_name = Text(required=True, validate=NAME_LENGTH)
    last_name = Text(required=True, validate=NAME_LENGTH)
    role = fields.String(validate=validate.OneOf(ROLES, error="Must be one of: {choices}."))


class OpenLoanSchema(Schema):
    loan_id = fields.Integer()
    book_id = fields.Integer()
    title = fields.String(allow_none=True)
    due_at = fields.DateTime()


class MemberSchema(Schema):
    """A member, with their open loans and the fines they owe."""

    class Meta:
        ordered = True

    id = fields.Integer()
    email = fields.String()
    first_name = fields.String()
    last_name = fields.String()
    role = fields.String(metadata={"enum": list(ROLES)})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    loans = fields.List(fields.Nested(OpenLoanSchema))
    fines_due = fields.Float()


class MemberListSchema(PageSchema):
    members = fields.List(fields.Nested(MemberSchema))


class MemberQuerySchema(PagedQuerySchema):
    """The query parameters of ``GET /members``."""

    sort_by = sort_by(MEMBER_SORT_FIELDS)
    role = fields.String(validate=validate.OneOf(ROLES, error="Must be one of: {choices}."))
    q = fields.String(metadata={"description": "Words that must all appear in the name or email."})


book_schema = BookSchema()
book_patch_schema = BookSchema(partial=True)
book_query_schema = BookQuerySchema()
changes_query_schema = ChangesQuerySchema()
# -- circulation -----------------------------------------------------------------------------------


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 time with its offset (``Z`` or ``+02:00``), turned into UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", default_timezone=None, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            return super()._deserialize(value, attr, data, **kwargs).astimezone(UTC)
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class BorrowSchema(StrictSchema):
    """``POST /books/<id>/borrow``: ``member_id`` and ``borrowed_at`` are a librarian's."""

    days = StrictInteger(
        metadata={"description": "1 to LIBRARY_MAX_LOAN_DAYS; LIBRARY_LOAN_DAYS when left out.", "minimum": 1}
    )
    member_id = StrictInteger(metadata={"description": "Lend to this member (librarians)."})
    borrowed_at = UtcDateTime(metadata={"description": "Record a loan made earlier (librarians)."})


class HoldRequestSchema(StrictSchema):
    member_id = StrictInteger(metadata={"description": "Place the hold for this member (librarians)."})


class PaymentSchema(StrictSchema):
    amount = fields.Decimal(
        required=True,
        places=None,
        allow_nan=False,
        as_string=False,
        metadata={"description": "More than 0, at most 2 decimals, at most what the member owes."},
    )

    @validates("amount")
    def positive_cents(self, value: Any, **kwargs: Any) -> None:
        if value > 1_000_000:
            raise ValidationError("Must be at most 1000000.")
        if value <= 0 or value != value.quantize(Decimal("0.01")):
            raise ValidationError("Must be more than 0 with at most 2 decimals.")


class LoanSchema(Schema):
    class Meta:
        ordered = True

    id = fields.Integer()
    book_id = fields.Integer()
    member_id = fields.Integer()
    borrowed_at = fields.DateTime()
    due_at = fields.DateTime()
    returned_at = fields.DateTime(allow_none=True)
    days = fields.Integer(metadata={"description": "The loan's period: a renewal adds it again."})
    renewals = fields.Integer()
    fine = fields.Float(metadata={"description": "Kept on return; so far while the book is out."})
    status = fields.String(metadata={"enum": ["active", "overdue", "returned"]})


class LoanListSchema(PageSchema):
    loans = fields.List(fields.Nested(LoanSchema))


LOAN_SORT_FIELDS = ("id", "borrowed_at", "due_at", "returned_at")


class CirculationQuerySchema(PagedQuerySchema):
    """What the loan and hold lists filter on."""

    member_id = fields.Integer()
    book_id = fields.Integer()


class LoanQuerySchema(CirculationQuerySchema):
    """The query parameters of ``GET /loans``."""

    status = fields.String(
        validate=validate.OneOf(["active", "overdue", "returned"], error="Must be one of: {choices}."),
        metadata={"description": "active (overdue ones included), overdue, or returned."},
    )
    sort_by = sort_by(LOAN_SORT_FIELDS)


class HoldSchema(Schema):
    class Meta:
        ordered = True

    id = fields.Integer()
    book_id = fields.Integer()
    member_id = fields.Integer()
    created_at = fields.DateTime()
    status = fields.String(metadata={"enum": ["waiting", "ready", "fulfilled", "cancelled", "expired"]})
    position = fields.Integer(allow_none=True, metadata={"description": "Place in the queue; 1 is next."})
    ready_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "The book is kept until then."})
    closed_at = fields.DateTime(allow_none=True)


class HoldListSchema(PageSchema):
    holds = fields.List(fields.Nested(HoldSchema))


class HoldQuerySchema(CirculationQuerySchema):
    """The query parameters of ``GET /holds``."""

    status = fields.String(
        validate=validate.OneOf(
            ["active", "waiting", "ready", "fulfilled", "cancelled", "expired"], error="Must be one of: {choices}."
        )
    )


class PaymentResultSchema(Schema):
    id = fields.Integer()
    member_id = fields.Integer()
    amount = fields.Float()
    paid_at = fields.DateTime()
    received_by = fields.Integer()
    fines_due = fields.Float(metadata={"description": "What the member still owes."})


class ImportFormSchema(StrictSchema):
    """The form fields of ``POST /imports`` beside the file."""

    dry_run = fields.Boolean(load_default=False, metadata={"description": "Report what would change; write nothing."})


class ImportLineSchema(Schema):
    class Meta:
        ordered = True

    line = fields.Integer(metadata={"description": "The line of the file the row starts on."})
    text = fields.String(metadata={"description": "As load-books prints it after the line number."})


class ImportReportSchema(Schema):
    """What an import did: the same report as ``flask load-books``."""

    class Meta:
        ordered = True

    file = fields.String()
    format = fields.String(metadata={"enum": ["json", "csv", "goodreads", "librarything"]})
    format_name = fields.String()
    rows = fields.Integer()
    dry_run = fields.Boolean()
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    merged = fields.Integer()
    skipped = fields.Integer()
    warnings = fields.Integer()
    lines = fields.List(
        fields.Nested(ImportLineSchema),
        metadata={"description": "Every row that did not simply create a book: updated, merged, warnings, skipped."},
    )
    unchanged_lines = fields.String(metadata={"description": 'The unchanged rows\' lines, as "5-9, 12".'})


class GenresSchema(Schema):
    genres = fields.List(fields.String(), metadata={"description": "Sorted, case-insensitively."})


class QueueSchema(Schema):
    book_id = fields.Integer()
    holds = fields.Integer(
        metadata={"description": "Active holds on the book: the one kept for a member, if any, and those waiting."}
    )


class WeekLoansSchema(Schema):
    class Meta:
        ordered = True

    week = fields.Date(metadata={"description": "The week's Monday (UTC)."})
    loans = fields.Integer()


class BorrowedSchema(Schema):
    class Meta:
        ordered = True

    book_id = fields.Integer()
    title = fields.String()
    loans = fields.Integer()


class OverdueSchema(Schema):
    class Meta:
        ordered = True

    loan_id = fields.Integer()
    book_id = fields.Integer()
    title = fields.String(allow_none=True)
    member_id = fields.Integer()
    member_name = fields.String()
    due_at = fields.DateTime()
    days_overdue = fields.Integer()


class StatsSchema(Schema):
    """The librarian's overview."""

    class Meta:
        ordered = True

    books = fields.Integer()
    members = fields.Integer()
    active_loans = fields.Integer(metadata={"description": "Open loans, the overdue ones included."})
    overdue_now = fields.Integer()
    holds_waiting = fields.Integer(metadata={"description": "Holds waiting for their book (not yet kept)."})
    loans_per_week = fields.List(
        fields.Nested(WeekLoansSchema), metadata={"description": "The last 12 weeks, oldest first, empty ones as 0."}
    )
    most_borrowed = fields.List(fields.Nested(BorrowedSchema), metadata={"description": "The top 10 of all time."})
    overdue = fields.List(fields.Nested(OverdueSchema), metadata={"description": "At most 50, most overdue first."})


borrow_schema = BorrowSchema()
import_form_schema = ImportFormSchema()
hold_request_schema = HoldRequestSchema()
payment_schema = PaymentSchema()
loan_query_schema = LoanQuerySchema()
hold_query_schema = HoldQuerySchema()
enrol_schema = EnrolSchema()
register_schema = RegisterSchema()
login_schema = LoginSchema()
member_patch_schema = MemberPatchSchema(partial=True)
member_query_schema = MemberQuerySchema()
