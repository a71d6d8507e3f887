"""Tokens are bound to the library that issued them and to its generation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime, timedelta

import jwt
import orjson
import pytest

from library import auth
from library_api import create_app
from storage.errors import CorruptFileError
from tests.conftest import TEST_SECRET, add_member, client_as, token_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def identity(app) -> dict:
    return auth.library_of(app.extensions["library_store"].snapshot())


def signed(app, **claims) -> str:
    """A token signed with the app's own key, with ``claims`` over good ones for member 1."""
    library, now = identity(app), int(time.time())
    good = {
        "iss": library["identity"],
        "aud": library["identity"],
        "gen": library["generation"],
        "sub": "1",
        "ver": 0,
        "role": "member",
        "iat": now,
        "exp": now + 600,
    }
    good.update(claims)
    # signed by hand: PyJWT's encode itself refuses some of the claims a forger can send
    payload = orjson.dumps({k: v for k, v in good.items() if v is not ...})
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    signing_input = f"{header}.{_b64(payload)}".encode()
    signature = hmac.new(app.extensions["library_secret"], signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_each_library_has_its_own_random_identity(tmp_path):
    one = create_app({"DATA_DIR": str(tmp_path / "one"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    two = create_app({"DATA_DIR": str(tmp_path / "two"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    again = create_app({"DATA_DIR": str(tmp_path / "one"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    assert identity(one)["identity"] != identity(two)["identity"]
    assert identity(again) == identity(one)  # made once, kept by the library
    assert identity(one)["generation"] == 1


def test_a_token_of_another_library_with_the_same_key_is_refused(tmp_path):
    staging = create_app({"DATA_DIR": str(tmp_path / "staging"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    production = create_app({"DATA_DIR": str(tmp_path / "production"), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    on_staging = client_as(staging, "admin")
    add_member(production, "someone@example.org", "admin")  # member 1 there too
    token = on_staging.environ_base["HTTP_AUTHORIZATION"]
    assert on_staging.get("/members/me").status_code == 200
    refused = production.test_client().get("/members/me", headers={"Authorization": token})
    assert refused.status_code == 401
    assert refused.get_json()["detail"] == "The token is not valid; sign in again"


def test_the_login_token_names_the_library_and_its_generation(app):
    anon = app.test_client()
    person = {"email": "a@example.org", "password": "a long password 1"}
    assert anon.post("/auth/register", json={**person, "first_name": "A", "last_name": "B"}).status_code == 201
    token = anon.post("/auth/login", json=person).get_json()["access_token"]
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"], audience=identity(app)["identity"])
    assert claims["iss"] == claims["aud"] == identity(app)["identity"]
    assert claims["gen"] == 1
    assert anon.get("/members/me", headers=bearer(token)).status_code == 200


def test_signing_everyone_out_ends_every_token_issued_before(app):
    admin, librarian, member = client_as(app, "admin"), client_as(app, "librarian"), client_as(app, "member")
    assert member.post("/auth/sign-out-everyone").status_code == 403
    assert librarian.post("/auth/sign-out-everyone").status_code == 403
    assert app.test_client().post("/auth/sign-out-everyone").status_code == 401
    answer = admin.post("/auth/sign-out-everyone")
    assert answer.status_code == 200 and "sign in again" in answer.get_json()["message"]
    for client in (admin, librarian, member):
        refused = client.get("/members/me")
        assert refused.status_code == 401
        assert refused.get_json()["detail"] == "The token is no longer valid; sign in again"
    assert identity(app)["generation"] == 2
    fresh = token_for(app, librarian.member)  # a token of the new generation works
    assert app.test_client().get("/members/me", headers=bearer(fresh)).status_code == 200


def test_signing_everyone_out_reaches_every_worker(app, data_dir):
    admin = client_as(app, "admin")
    token = admin.environ_base["HTTP_AUTHORIZATION"]
    other = create_app({"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET})
    assert other.test_client().get("/members/me", headers={"Authorization": token}).status_code == 200
    assert admin.post("/auth/sign-out-everyone").status_code == 200
    assert other.test_client().get("/members/me", headers={"Authorization": token}).status_code == 401


def test_the_route_is_in_the_openapi_document(app):
    operation = app.test_client().get("/openapi.json").get_json()["paths"]["/auth/sign-out-everyone"]["post"]
    assert "admin" in str(operation).lower()


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "one"},
        {"sub": 1},
        {"sub": "١"},  # an Arabic-Indic digit: a digit to str.isdigit, not a member id
        {"sub": "²"},
        {"sub": "-1"},
        {"sub": ""},
        {"ver": True},
        {"ver": "0"},
        {"ver": 0.0},
        {"gen": True},
        {"gen": "1"},
        {"gen": 1.0},
        {"gen": 0},
        {"gen": 2},  # a generation not reached yet
        {"gen": ...},
        {"iss": ...},
        {"aud": ...},
        {"iss": "another-library-identity"},
        {"aud": "another-library-identity"},
        {"aud": ["another", "list"]},
        {"iss": 1},
        {"exp": "4102444800"},
        {"exp": 1e300},
        {"exp": True},
        {"exp": ...},
        {"iat": "0"},
        {"iat": ...},
    ],
    ids=repr,
)
def test_a_token_signed_with_the_key_but_with_bad_claims_is_a_401(app, claims):
    add_member(app, "one@example.org")
    assert app.test_client().get("/members/me", headers=bearer(signed(app))).status_code == 200  # the control
    response = app.test_client().get("/members/me", headers=bearer(signed(app, **claims)))
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["status"] == 401
    assert "invalid_token" in response.headers["WWW-Authenticate"]


def test_the_audience_as_a_list_holding_the_identity_is_refused(app):
    add_member(app, "one@example.org")
    token = signed(app, aud=[identity(app)["identity"], "elsewhere"])
    assert app.test_client().get("/members/me", headers=bearer(token)).status_code == 401


def test_a_token_before_the_library_record_exists_signs_nobody_in():
    with pytest.raises(auth.TokenError):
        auth.read_token(TEST_SECRET.encode(), "a.b.c", {"identity": "", "generation": 0})


def test_a_library_record_broken_by_hand_is_refused_like_any_collection_file(data_dir):
    settings = {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET}
    create_app(settings).extensions["library_store"].close()
    (data_dir / "library.json").write_text('{"library": [{"id": 1, "identity": "", "generation": "x"}]}')
    with pytest.raises(CorruptFileError, match=r"library.json: record 1 \(id 1\): \"identity\" must not be empty"):
        create_app(settings)
    short = {"id": 1, "identity": "short", "generation": 1}
    (data_dir / "library.json").write_text(orjson.dumps({"library": [short]}).decode())
    with pytest.raises(CorruptFileError, match="at least 16 characters"):
        create_app(settings)


def test_a_member_written_without_a_token_version_signs_in(app):
    store = app.extensions["library_store"]
    person = {"email": "hand@example.org", "first_name": "H", "last_name": "E", "role": "member"}
    member = store.update(lambda txn: txn.insert("members", person))  # as a person adds one by hand
    assert app.test_client().get("/members/me", headers=bearer(token_for(app, member))).status_code == 200


def test_a_token_accepted_before_is_refused_once_it_has_expired(app, monkeypatch):
    add_member(app, "m@example.org", "member")
    token = signed(app, exp=int(time.time()) + 60)
    client = app.test_client()
    assert client.get("/members/me", headers=bearer(token)).status_code == 200
    assert client.get("/members/me", headers=bearer(token)).status_code == 200  # the remembered check

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(seconds=61)

    monkeypatch.setattr(auth, "datetime", Later)
    refused = client.get("/members/me", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.get_json()["detail"] == "The token has expired; sign in again"
