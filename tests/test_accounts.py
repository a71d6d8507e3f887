"""Accounts at their edges: closing registration, per-client rate limits, look-alike emails and
invisible text, weak passwords, the lockout's window and its answer, create-admin's names."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from library_api import create_app
from tests.conftest import BOOK, TEST_SECRET, Clock, add_member, assert_problem, client_as

PASSWORD = "correct horse battery"
WRONG = "wrong password!"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_app(data_dir, **config: Any):
    return create_app(
        {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, **config}
    )


@pytest.fixture
def app(data_dir, clock):
    return make_app(data_dir, CLOCK=clock)


def register(client, email: str = "ada@example.org", password: str = PASSWORD, **extra: Any):
    body = {"email": email, "password": password, "first_name": "Ada", "last_name": "Lovelace", **extra}
    return client.post("/auth/register", json=body)


def login(client, email: str = "ada@example.org", password: str = PASSWORD, **environ: Any):
    return client.post(
        "/auth/login", json={"email": email, "password": password}, **({"environ_base": environ} if environ else {})
    )


# -- registration open or closed -------------------------------------------------------------------


def test_the_library_says_its_name_and_whether_registration_is_open(data_dir):
    anon = make_app(data_dir).test_client()
    assert anon.get("/library").get_json() == {"name": "Library", "registration": "open"}
    other = make_app(data_dir, NAME="Hill Street Library", REGISTRATION="closed").test_client()
    assert other.get("/library").get_json() == {"name": "Hill Street Library", "registration": "closed"}


def test_closed_registration_is_403_and_not_offered_in_the_docs(data_dir):
    app = make_app(data_dir, REGISTRATION="closed")
    anon = app.test_client()
    refused = assert_problem(register(anon), 403)
    assert "closed" in refused["detail"]
    assert "/auth/register" not in anon.get("/openapi.json").get_json()["paths"]
    assert app.extensions["library_store"].snapshot().count("members") == 0
    librarian = client_as(app, "librarian")
    enrolled = librarian.post("/members", json={"email": "kid@example.org", "first_name": "K", "last_name": "R"})
    assert enrolled.status_code == 201  # librarians still enrol


def test_open_registration_is_offered(data_dir):
    anon = make_app(data_dir).test_client()
    assert register(anon).status_code == 201
    assert "/auth/register" in anon.get("/openapi.json").get_json()["paths"]


@pytest.mark.parametrize("value", ["Open", " closed "])
def test_the_registration_setting_is_read_without_case_or_spaces(data_dir, value):
    assert make_app(data_dir, REGISTRATION=value).config["REGISTRATION"] == value.strip().lower()


def test_a_registration_setting_that_is_neither_open_nor_closed_stops_the_start(data_dir):
    with pytest.raises(ValueError, match="LIBRARY_REGISTRATION"):
        make_app(data_dir, REGISTRATION="invite-only")


# -- per-client rate limits ------------------------------------------------------------------------


def test_sign_ins_from_one_address_are_limited_and_the_429_says_when_to_come_back(data_dir):
    anon = make_app(data_dir, SIGNIN_RATE_LIMIT="3 per minute").test_client()
    for i in range(3):  # three different emails: the per-email lockout is not what stops them
        assert_problem(login(anon, f"user{i}@example.org"), 401)
    limited = assert_problem(login(anon, "user9@example.org"), 429)
    assert "try again after" in limited["detail"] and "UTC" in limited["detail"]
    assert 1 <= int(anon.post("/auth/login", json={}).headers["Retry-After"]) <= 60
    other = login(anon, "user9@example.org", REMOTE_ADDR="192.0.2.7")  # another client is not limited
    assert other.status_code == 401


def test_registrations_from_one_address_are_limited(data_dir):
    anon = make_app(data_dir, REGISTER_RATE_LIMIT="2 per hour").test_client()
    assert register(anon, "a@example.org").status_code == 201
    assert register(anon, "b@example.org").status_code == 201
    assert_problem(register(anon, "c@example.org"), 429)


def test_an_empty_limit_turns_it_off(data_dir):
    anon = make_app(data_dir, SIGNIN_RATE_LIMIT="").test_client()
    for i in range(40):
        assert login(anon, f"user{i}@example.org").status_code == 401


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(data_dir):
    anon = make_app(data_dir, SIGNIN_RATE_LIMIT="2 per minute", PROXY_COUNT=1).test_client()

    def from_client(address: str, i: int):
        return anon.post(
            "/auth/login",
            json={"email": f"u{i}@example.org", "password": WRONG},
            headers={"X-Forwarded-For": address},
        )

    assert [from_client("198.51.100.1", i).status_code for i in range(3)] == [401, 401, 429]
    assert from_client("198.51.100.2", 9).status_code == 401


def test_without_a_trusted_proxy_a_forwarded_address_is_not_believed(data_dir):
    anon = make_app(data_dir, SIGNIN_RATE_LIMIT="2 per minute").test_client()
    codes = [
        anon.post(
            "/auth/login",
            json={"email": f"u{i}@example.org", "password": WRONG},
            headers={"X-Forwarded-For": f"10.0.0.{i}"},
        ).status_code
        for i in range(3)
    ]
    assert codes == [401, 401, 429]


# -- emails, names and text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "kate@example.com\u200b",  # zero-width space: a look-alike of kate@example.com
        "ka\u200dte@example.com",
        "ka\u200cte@example.com",  # joiners: no script of an address needs them
        "kate@exa\u200dmple.com",
        "kate@exam\u202eple.com",  # a bidi override
        "kate\x00@example.com",
        "ka te@example.com",
        "\ufeffkate@example.com",
    ],
)
def test_an_email_with_invisible_characters_is_refused(anon, email):
    refused = assert_problem(register(anon, email), 422)
    assert "email" in refused["errors"]


def test_an_email_is_kept_in_nfc_and_signs_in_in_either_form(anon):
    decomposed = "jose\u0301@example.org"  # é as e + a combining accent
    member = register(anon, decomposed).get_json()
    assert member["email"] == "jos\u00e9@example.org"
    assert_problem(register(anon, "JOS\u00c9@example.org"), 409)
    assert login(anon, decomposed).status_code == 200
    assert login(anon, "jos\u00e9@example.org").status_code == 200


def test_names_are_kept_in_nfc(anon):
    member = register(anon, first_name="Zo\u0065\u0308").get_json()
    assert member["first_name"] == "Zo\u00eb"


@pytest.mark.parametrize(
    "title",
    [
        "\u200b\u200b",  # only invisible characters
        "\u200d",
        "Dune\u200d",  # a joiner at the end joins nothing
        "Du\u200c ne",
        "\u2066\u2069",
        "Dune\x00",
        "Dune \u202egnp.exe",
        "Du\nne",
        "Dune\u2028Messiah",
        "\u00ad",
    ],
)
def test_a_title_with_control_or_invisible_characters_is_refused(client, title):
    refused = assert_problem(client.post("/books", json={**BOOK, "title": title}), 422)
    assert "title" in refused["errors"]


@pytest.mark.parametrize("field", ["author", "genre", "publisher"])
def test_other_book_texts_refuse_invisible_characters(client, field):
    assert_problem(client.post("/books", json={**BOOK, field: "Frank\u200b Herbert"}), 422)


def test_names_refuse_invisible_characters(anon):
    refused = assert_problem(register(anon, last_name="Love\u200blace"), 422)
    assert "last_name" in refused["errors"]


@pytest.mark.parametrize(
    "title",
    [
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian needs the zero-width non-joiner
        "The \U0001f468\u200d\U0001f469\u200d\U0001f467 Family",  # an emoji sequence joined by ZWJ
        "  Dune\t",  # spaces, tabs and newlines around a text are trimmed
    ],
)
def test_joiners_between_characters_and_whitespace_around_are_kept_or_trimmed(client, title):
    created = client.post("/books", json={**BOOK, "isbn": None, "title": title})
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["title"] == title.strip()


# -- passwords -------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [" " * 8, "\t" * 10, " \u3000 " * 4])
def test_a_password_of_only_spaces_is_refused(anon, password):
    refused = assert_problem(register(anon, password=password), 422)
    assert refused["errors"]["password"] == ["Must not be only spaces."]


@pytest.mark.parametrize("password", ["password1", "Password1", "12345678", "iloveyou", "qwertyuiop", "trustno1"])
def test_a_common_password_is_refused(anon, password):
    refused = assert_problem(register(anon, password=password), 422)
    assert "most common passwords" in refused["errors"]["password"][0]


def test_an_uncommon_password_is_taken(anon):
    assert register(anon, password="violet marmalade 42").status_code == 201


def test_create_admin_refuses_a_common_password(app):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "r@example.org", "--password", "password1", "--name", "R A"]
    )
    assert result.exit_code != 0 and "common" in result.output


# -- the lockout -----------------------------------------------------------------------------------


def test_a_failure_exactly_fifteen_minutes_old_no_longer_counts(anon, clock):
    register(anon)
    assert_problem(login(anon, password=WRONG), 401)
    clock.advance(minutes=1)
    for _ in range(3):
        assert_problem(login(anon, password=WRONG), 401)
    clock.advance(minutes=14)  # the first failure is now exactly 15:00 old
    assert_problem(login(anon, password=WRONG), 401)  # the 4th that counts, not the 5th
    assert login(anon).status_code == 200


def test_five_failures_within_fifteen_minutes_lock(anon, clock):
    register(anon)
    assert_problem(login(anon, password=WRONG), 401)
    clock.advance(minutes=14, seconds=59)
    for _ in range(4):
        assert_problem(login(anon, password=WRONG), 401)
    assert_problem(login(anon), 429)


def test_the_lockout_says_when_to_come_back(anon, clock):
    register(anon)
    for _ in range(5):
        assert_problem(login(anon, password=WRONG), 401)
    locked = login(anon)
    body = assert_problem(locked, 429)
    until = clock.now + timedelta(minutes=15)
    assert f"try again after {until:%H:%M:%S} UTC" in body["detail"]
    assert locked.headers["Retry-After"] == "900"
    clock.advance(minutes=15)  # exactly when it said
    assert login(anon).status_code == 200


# -- create-admin ----------------------------------------------------------------------------------


def test_create_admin_takes_the_name(app):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "root@example.org", "--password", PASSWORD, "--name", "Grace Brewster Hopper"]
    )
    assert result.exit_code == 0, result.output
    member = next(iter(app.extensions["library_store"].snapshot().records("members").values()))
    assert (member["first_name"], member["last_name"]) == ("Grace Brewster", "Hopper")


def test_create_admin_asks_for_the_name_instead_of_making_one_from_the_email(app):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "root@example.org", "--password", PASSWORD], input="Grace\nHopper\n"
    )
    assert result.exit_code == 0, result.output
    assert "First name" in result.output and "Last name" in result.output
    member = next(iter(app.extensions["library_store"].snapshot().records("members").values()))
    assert (member["first_name"], member["last_name"]) == ("Grace", "Hopper")


def test_create_admin_refuses_an_invisible_name(app):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "root@example.org", "--password", PASSWORD, "--name", "\u200b \u200b"]
    )
    assert result.exit_code != 0


def test_create_admin_does_not_ask_names_of_a_member_it_promotes(app):
    add_member(app, "ada@example.org")
    result = app.test_cli_runner().invoke(args=["create-admin", "ada@example.org", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    assert "First name" not in result.output


def test_lockout_records_exactly_fifteen_minutes_old_are_dropped(anon, data_dir, clock):
    import orjson

    def kept() -> int:
        anon.application.extensions["library_store"].maintain(force=True)
        return len(orjson.loads((data_dir / "logins.json").read_bytes())["logins"])

    for i in range(3):
        assert_problem(login(anon, f"user{i}@example.org"), 401)
    clock.advance(minutes=15)  # their time is over exactly now
    login(anon, "later@example.org")
    assert kept() == 1
