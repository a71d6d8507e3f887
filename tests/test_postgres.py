"""Running on PostgreSQL: the settings, /healthz, moving a data directory into a database, backups
of either store restoring into the other, and files shared between the processes of one database."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from library_api import create_app
from tests.conftest import BOOK, TEST_SECRET, client_as
from tests.postgres import fresh_database

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (1).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + bytes(64)


def pg_app(url: str, data_dir: Path, **config):
    return create_app(
        {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "DATABASE_URL": url}
        | config
    )


def json_app(data_dir: Path, **config):
    return create_app(
        {"TESTING": True, "DATA_DIR": str(data_dir), "SEED_FILE": "", "SECRET_KEY": TEST_SECRET, "DATABASE_URL": ""}
        | config
    )


def fetch(client, url: str) -> bytes:
    with client.get(url) as response:
        return response.data


def titles(app) -> list[str]:
    return [b["title"] for b in app.test_client().get("/books").get_json()["books"]]


def until(condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("never happened")


def waiting_for_a_lock(url: str) -> int:
    """How many connections to the database at ``url`` wait for a lock (a commit, for the commit lock)."""
    with psycopg.connect(url, autocommit=True) as admin:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        return admin.execute(query).fetchone()[0]


def test_database_url_is_the_fallback_and_healthz_names_the_schema(tmp_path, monkeypatch):
    url = fresh_database(str(tmp_path))
    monkeypatch.delenv("LIBRARY_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "cache"), "SECRET_KEY": TEST_SECRET})
    try:
        body = app.test_client().get("/healthz").get_json()
        assert body["backend"] == "postgresql" and body["schema_version"] >= 1 and body["status"] == "ok"
        assert body["books"] > 0  # the sample catalogue filled the new database once
        assert not (tmp_path / "cache" / "books.json").exists()
    finally:
        app.extensions["library_store"].close()
    again = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "other"), "SECRET_KEY": TEST_SECRET})
    try:  # a second server on the same database does not seed it again
        assert again.test_client().get("/healthz").get_json()["books"] == body["books"]
    finally:
        again.extensions["library_store"].close()


def test_without_a_database_the_files_as_before(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = json_app(tmp_path / "data")
    assert app.test_client().get("/healthz").get_json()["backend"] == "json"
    assert (tmp_path / "data" / "journal.jsonl").exists()


def test_migrate_data_copies_everything_and_the_servers_go_on_from_there(tmp_path):
    source = json_app(tmp_path / "data")
    librarian = client_as(source, "librarian")
    first = librarian.post("/books", json=BOOK).get_json()
    gone = librarian.post("/books", json={**BOOK, "title": "Deleted", "isbn": None}).get_json()
    librarian.delete(f"/books/{gone['id']}")
    cover = librarian.post(f"/books/{first['id']}/cover", data={"file": (io.BytesIO(PNG), "c.png")})
    assert cover.status_code in (200, 201), cover.get_data(as_text=True)
    cover_url = librarian.get(f"/books/{first['id']}").get_json()["cover_url"]
    seq = source.extensions["library_store"].snapshot().seq
    url = fresh_database(str(tmp_path / "db"))

    result = source.test_cli_runner().invoke(args=["migrate-data", "--to", url])
    assert result.exit_code == 0, result.output
    assert "counts verified" in result.output and "2 members" not in result.output

    app = pg_app(url, tmp_path / "cache")
    try:
        client = app.test_client()
        assert titles(app) == [BOOK["title"]]
        assert client.get("/healthz").get_json()["seq"] == seq
        assert fetch(client, cover_url) == PNG  # the upload came along
        new = client_as(app, "librarian").post("/books", json={**BOOK, "title": "After", "isbn": None}).get_json()
        assert new["id"] > gone["id"]  # ids are never given twice, across the move too
    finally:
        app.extensions["library_store"].close()
    again = source.test_cli_runner().invoke(args=["migrate-data", "--to", url])
    assert again.exit_code != 0 and "already holds a library" in again.output


def test_a_backup_of_the_database_restores_into_a_data_directory(tmp_path):
    url = fresh_database(str(tmp_path))
    app = pg_app(url, tmp_path / "cache")
    try:
        client_as(app, "librarian").post("/books", json=BOOK)
        archive = tmp_path / "b.tar.gz"
        result = app.test_cli_runner().invoke(args=["backup", str(archive)])
        assert result.exit_code == 0, result.output
    finally:
        app.extensions["library_store"].close()
    with tarfile.open(archive) as tar:
        assert "books.json" in tar.getnames()
    target = json_app(tmp_path / "restored")
    restored = target.test_cli_runner().invoke(args=["restore", str(archive)])
    assert restored.exit_code == 0, restored.output
    assert titles(json_app(tmp_path / "restored")) == [BOOK["title"]]


def test_two_apps_on_one_database_see_each_others_writes_and_files(tmp_path):
    url = fresh_database(str(tmp_path))
    one, two = pg_app(url, tmp_path / "one"), pg_app(url, tmp_path / "two")
    try:
        librarian = client_as(one, "librarian")
        book = librarian.post("/books", json=BOOK).get_json()
        assert titles(two) == [BOOK["title"]]
        etag = two.test_client().get(f"/books/{book['id']}").headers["ETag"]
        librarian.post(f"/books/{book['id']}/cover", data={"file": (io.BytesIO(PNG), "c.png")})
        cover_url = two.test_client().get(f"/books/{book['id']}").get_json()["cover_url"]
        assert fetch(two.test_client(), cover_url) == PNG
        stale = client_as(two, "librarian").put(f"/books/{book['id']}", json=BOOK, headers={"If-Match": etag})
        assert stale.status_code == 412  # If-Match checked against the other server's commit
    finally:
        one.extensions["library_store"].close()
        two.extensions["library_store"].close()


def test_a_write_signs_in_against_what_its_server_holds_and_is_checked_again_under_the_lock(tmp_path):
    """A book write reads its token against the state its server holds (no round trip to the
    database), so what another server changed a moment ago is checked where it counts: a token
    that everyone's sign-out or a demotion ended is refused in the write's transaction (401, as
    at sign-in), and a librarian just made on the other server is found by asking for the latest."""
    url = fresh_database(str(tmp_path))
    one, two = pg_app(url, tmp_path / "one"), pg_app(url, tmp_path / "two")
    try:
        admin, librarian = client_as(one, "admin"), client_as(one, "librarian")
        assert titles(two) == []  # two has taken in both members
        assert admin.post("/auth/sign-out-everyone").status_code == 200
        on_two = two.test_client()
        ended = {"Authorization": librarian.environ_base["HTTP_AUTHORIZATION"]}
        answer = on_two.post("/books", json=BOOK, headers=ended)
        at_sign_in = one.test_client().post("/books", json=BOOK, headers=ended)  # one has the sign-out
        assert answer.status_code == at_sign_in.status_code == 401
        assert (
            answer.get_json()["detail"]
            == at_sign_in.get_json()["detail"]
            == "The token is no longer valid; sign in again"
        )
        assert answer.headers["WWW-Authenticate"] == at_sign_in.headers["WWW-Authenticate"]
        assert "error=invalid_token" in answer.headers["WWW-Authenticate"]
        assert titles(one) == [] and titles(two) == []
        newcomer = client_as(one, "librarian")  # made on one after two last looked
        token = newcomer.environ_base["HTTP_AUTHORIZATION"]
        created = on_two.post("/books", json=BOOK, headers={"Authorization": token})
        assert created.status_code == 201
        assert titles(one) == [BOOK["title"]]
        demoted = client_as(one, "admin").patch(f"/members/{newcomer.member['id']}", json={"role": "member"})
        assert demoted.status_code == 200  # on one; two has not looked since
        late = on_two.delete(f"/books/{created.get_json()['id']}", headers={"Authorization": token})
        assert late.status_code == 401 and late.headers["WWW-Authenticate"] == answer.headers["WWW-Authenticate"]
        assert titles(one) == [BOOK["title"]]
    finally:
        one.extensions["library_store"].close()
        two.extensions["library_store"].close()


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    url = fresh_database(str(tmp_path))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE library_schema SET version = 999")
    with pytest.raises(Exception, match="newer than this server"):
        pg_app(url, tmp_path / "cache")


def test_a_write_that_timed_out_waiting_for_the_lock_ran_nothing_and_fails_no_commit(tmp_path):
    """Callers that keep indexes in step with commits rebuild them after a failed commit; a write
    that never got the lock ran no updater, so it must not send every index into a rebuild (under
    the lock, holding up every other server)."""
    from storage import LockTimeoutError
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    holder, waiter = PgStore(url, ("books",)), PgStore(url, ("books",), lock_timeout=0.2)
    try:
        ran = []
        with holder.exclusive(), pytest.raises(LockTimeoutError):
            waiter.update(lambda txn: ran.append(txn.insert("books", {"title": "t"})))
        assert ran == [] and waiter.failed_commits == 0
        waiter.update(lambda txn: txn.insert("books", {"title": "t"}))
        assert holder.snapshot().count("books") == 1
    finally:
        holder.close()
        waiter.close()


def test_connections_cut_by_the_database_cost_no_refused_write_and_no_stale_read(tmp_path):
    """Every connection to the database is cut (a restart, a failover, an idle timeout): the
    next write and the next read of each server find their pooled connection dead before they
    have written anything, and go on through a fresh one instead of failing or reading stale."""
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with closing(PgStore(url, ("books",))) as one, closing(PgStore(url, ("books",))) as two:
        one.update(lambda txn: txn.insert("books", {"title": "before"}))
        assert two.snapshot().count("books") == 1
        with psycopg.connect(url, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert cut >= 2
        one.update(lambda txn: txn.insert("books", {"title": "after"}))
        assert [b["title"] for b in two.snapshot().records("books").values()] == ["before", "after"]
        assert two.health()["problems"] == []
        two.update(lambda txn: txn.insert("books", {"title": "third"}))
        with psycopg.connect(url) as check:
            stored = check.execute("SELECT record->>'title' FROM library_records ORDER BY id").fetchall()
        assert stored == [("before",), ("after",), ("third",)]


def test_writes_go_on_after_rollbacks_of_a_connection_that_shared_files(tmp_path):
    """Commits that share files run statements of their own; rolling back afterwards (an
    exclusive block, a write that timed out waiting for the lock) must not lose the statements
    every commit needs."""
    from storage import LockTimeoutError
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with (
        closing(PgStore(url, ("books",), directory=tmp_path / "one", lock_timeout=0.3)) as store,
        closing(PgStore(url, ("books",), directory=tmp_path / "two")) as other,
    ):
        (tmp_path / "one" / "uploads").mkdir(parents=True)
        for i in range(7):
            (tmp_path / "one" / "uploads" / f"f{i}.txt").write_bytes(b"x%d" % i)
            store.update(lambda txn, i=i: txn.insert("books", {"title": f"t{i}"}))
        with store.exclusive():
            pass
        with other.exclusive(), pytest.raises(LockTimeoutError):
            store.update(lambda txn: txn.insert("books", {"title": "refused"}))
        store.update(lambda txn: txn.insert("books", {"title": "after"}))
        assert other.snapshot().count("books") == 8


def test_a_catch_up_that_fails_under_the_lock_does_not_keep_it(tmp_path):
    """A server whose catch-up fails after the commit lock was granted (here a file it cannot
    write: a folder stands at its name) refuses its own write but does not hold every other
    server's writes off."""
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with (
        closing(PgStore(url, ("books",), directory=tmp_path / "one", lock_timeout=2)) as one,
        closing(PgStore(url, ("books",), directory=tmp_path / "two", lock_timeout=2)) as two,
    ):
        (tmp_path / "two" / "uploads" / "x.txt").mkdir(parents=True)
        (tmp_path / "one" / "uploads").mkdir(parents=True)
        (tmp_path / "one" / "uploads" / "x.txt").write_bytes(b"shared")
        one.update(lambda txn: txn.insert("books", {"title": "one"}))
        with pytest.raises(IsADirectoryError):  # its own write is refused, with the reason
            two.update(lambda txn: txn.insert("books", {"title": "two"}))
        one.update(lambda txn: txn.insert("books", {"title": "one again"}))  # not locked out
        assert [b["title"] for b in one.snapshot().records("books").values()] == ["one", "one again"]


def test_a_commit_in_an_exclusive_block_that_cannot_lock_again_stands_and_the_block_fails(tmp_path):
    """A commit made inside an exclusive() block ends the transaction that held the commit lock,
    and the block takes it again at once. When that fails (here the catch-up, with the file another
    server committed in between, which a folder at its name keeps this one from writing), the
    commit is reported as made (a writer told it failed would make it again), and the block,
    which no longer holds the lock, fails at its next commit and at its end."""
    from storage import StoreUnavailableError
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with (
        closing(PgStore(url, ("books",), directory=tmp_path / "one", lock_timeout=5)) as one,
        closing(PgStore(url, ("books",), directory=tmp_path / "two", lock_timeout=5)) as two,
        psycopg.connect(url, autocommit=True) as admin,
    ):
        (tmp_path / "one" / "uploads" / "x.txt").mkdir(parents=True)
        (tmp_path / "two" / "uploads").mkdir(parents=True)
        (tmp_path / "two" / "uploads" / "x.txt").write_bytes(b"from two")
        outcomes: dict[str, dict] = {}
        with pytest.raises(StoreUnavailableError, match="lock was lost"), one.exclusive():
            waiting = threading.Thread(
                target=lambda: outcomes.setdefault("two", two.update(lambda txn: txn.insert("books", {"title": "two"})))
            )
            waiting.start()
            until(lambda: waiting_for_a_lock(url) == 1)  # two's commit
            # Row locks are not granted in turn: the block may take the lock again before two does,
            # so it commits until one of its commits hands the lock to two (each one stands).
            made = []
            with pytest.raises(StoreUnavailableError, match="lock was lost"):
                for n in range(50):
                    made.append(one.update(lambda txn, n=n: txn.insert("books", {"title": f"in the block {n}"})))
        waiting.join()
        assert 1 <= len(made) < 50 and outcomes["two"]["title"] == "two"
        titles = sorted(r[0] for r in admin.execute("SELECT record->>'title' FROM library_records").fetchall())
        assert titles == sorted([book["title"] for book in made] + ["two"])
        (tmp_path / "one" / "uploads" / "x.txt").rmdir()  # the cause removed: the server goes on
        assert one.update(lambda txn: txn.insert("books", {"title": "later"}))["title"] == "later"
        assert (tmp_path / "one" / "uploads" / "x.txt").read_bytes() == b"from two"


def test_a_statement_timeout_of_the_database_refuses_the_write_with_its_reason(tmp_path):
    """A database (or role) with a statement_timeout shorter than the wait for the commit lock:
    the write is refused with the database's reason, once, not taken for a broken connection,
    tried again on a new one and reported as a database that cannot be reached."""
    import time

    from storage import StoreUnavailableError
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} SET statement_timeout = '300ms'")
    with (
        closing(PgStore(url, ("books",), lock_timeout=10)) as holder,
        closing(PgStore(url, ("books",), lock_timeout=10)) as writer,
    ):
        writer.update(lambda txn: txn.insert("books", {"title": "before"}))
        with holder.exclusive():
            began = time.monotonic()
            refusal = "refused the change: canceling statement due to statement timeout"
            with pytest.raises(StoreUnavailableError, match=refusal):
                writer.update(lambda txn: txn.insert("books", {"title": "waits"}))
            assert time.monotonic() - began < 1.5  # one wait of 300 ms, not one per connection (and more)
        assert writer.update(lambda txn: txn.insert("books", {"title": "after"}))["title"] == "after"
        with psycopg.connect(url, autocommit=True) as admin:  # the commit's own statement now runs too long
            admin.execute(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;"
                "CREATE TRIGGER slow BEFORE INSERT ON library_changes FOR EACH ROW EXECUTE FUNCTION slow()"
            )
        with pytest.raises(StoreUnavailableError, match=refusal):  # known not kept, not "unknown"
            writer.update(lambda txn: txn.insert("books", {"title": "canceled"}))
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("DROP TRIGGER slow ON library_changes")
        assert writer.update(lambda txn: txn.insert("books", {"title": "last"}))["title"] == "last"
        assert [b["title"] for b in writer.snapshot().records("books").values()] == ["before", "after", "last"]


def test_a_journal_that_grew_after_start_is_read_by_its_index_not_scanned(tmp_path):
    """Two servers that started on a new database (a few changes, analyzed as autovacuum does)
    and then took in a large import: the lock of a commit and the check of a read ask for the
    changes after theirs through the seq index, not by reading the whole journal. A plan is kept
    for a connection's life; one made while the journal was small scanned the whole table on every
    check ever after, and in the lock it held every server's writes meanwhile."""
    from storage.postgres import _CHECK, PgStore

    def scans(conn: psycopg.Connection, statement: Callable[[], object]) -> int:
        """Sequential scans of library_changes by ``statement``, in ``conn``'s open transaction."""
        query = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'library_changes'"
        before = conn.execute(query).fetchone()[0]
        statement()
        return conn.execute(query).fetchone()[0] - before

    def both_write(rounds: int) -> None:  # each catches up with the other's change in its lock and its check
        for i in range(rounds):
            one.update(lambda txn, i=i: txn.insert("books", {"title": f"one {i}"}))
            two.update(lambda txn, i=i: txn.insert("books", {"title": f"two {i}"}))
            one.snapshot(), two.snapshot()

    def import_(txn):
        for i in range(20_000):
            txn.insert("books", {"title": f"imported {i}"})

    url = fresh_database(str(tmp_path))
    with closing(PgStore(url, ("books",))) as one, closing(PgStore(url, ("books",))) as two:
        both_write(2)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("ANALYZE library_changes")
        both_write(8)
        two.update(import_)
        assert one.snapshot().count("books") == 20_020  # its check took the import in
        two.update(lambda txn: txn.insert("books", {"title": "after"}))
        since = two.snapshot().seq - 1
        check = one._check_conn
        with check.transaction():
            assert scans(check, lambda: check.pgconn.exec_prepared(_CHECK, [b"%d" % since])) == 0
        with one.exclusive() as snap:  # the lock took the last change in
            assert snap.count("books") == 20_021
            lock = one._commit_conn
            assert scans(lock, lambda: lock.execute("SELECT count(*) FROM library_lock(%s, 0)", (since,))) == 0


def test_a_write_that_joined_a_commit_is_read_back_without_asking_the_database(tmp_path):
    """A request whose write joined a commit after that commit had asked for the lock (see the
    storage contract) reads what it wrote with no check of its own: until the COMMIT the lock was
    held, so the database held nothing the commit's snapshot did not."""
    import time

    from storage.base import reads_since
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with closing(PgStore(url, ("books",))) as store, closing(PgStore(url, ("books",))) as other:
        checks: list[int] = []
        check = store._check
        store._check = lambda: (checks.append(threading.get_ident()), check())[1]
        seen: dict[str, object] = {}
        ran_on: dict[str, int] = {}

        def write(title: str):
            def updater(txn):
                ran_on[title] = threading.get_ident()
                return txn.insert("books", {"title": title})

            return store.update(updater)

        def joined() -> None:
            with reads_since(time.monotonic()):  # arrives after the first write asked for the lock
                book = write("joined")
                seen["read"] = store.snapshot().get("books", book["id"])["title"]
                seen["checks"] = checks.count(threading.get_ident())

        with other.exclusive():
            first = threading.Thread(target=write, args=("first",))
            first.start()
            until(lambda: waiting_for_a_lock(url) == 1)  # it took its batch and asked for the lock
            late = threading.Thread(target=joined)
            late.start()
            until(lambda: store.waiting_writes == 1)
        first.join()
        late.join()
        assert ran_on["joined"] == ran_on["first"] == first.ident  # one commit
        assert seen == {"read": "joined", "checks": 0}


def test_a_write_that_joined_a_commit_puts_the_file_its_request_saved_into_the_database(tmp_path):
    """An upload is saved into the folder before its write asks for the commit; a write that
    joined a commit after that commit had looked at the folders still commits its file with it,
    so every other server can serve what the record names."""
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with (
        closing(PgStore(url, ("books",), directory=tmp_path / "one")) as store,
        closing(PgStore(url, ("books",), directory=tmp_path / "two")) as other,
    ):
        (tmp_path / "one" / "uploads").mkdir(parents=True)

        def upload() -> None:  # as attach_file does: the file first, then the write naming it
            (tmp_path / "one" / "uploads" / "cover.png").write_bytes(PNG)
            store.update(lambda txn: txn.insert("books", {"title": "with a cover", "cover_url": "/uploads/cover.png"}))

        with other.exclusive():
            first = threading.Thread(target=lambda: store.update(lambda txn: txn.insert("books", {"title": "first"})))
            first.start()
            until(lambda: waiting_for_a_lock(url) == 1)  # so it has looked at the folders
            late = threading.Thread(target=upload)
            late.start()
            until(lambda: store.waiting_writes == 1)
        first.join()
        late.join()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT name, data FROM library_files").fetchall() == [("uploads/cover.png", PNG)]
        other.snapshot()
        assert (tmp_path / "two" / "uploads" / "cover.png").read_bytes() == PNG


def test_a_commit_sends_the_records_as_parameters_never_in_a_statement_text(tmp_path):
    """The database shows a statement's text in pg_stat_activity and writes it to its log with an
    error: a member's record (their email, their password's hash) must not be in it."""
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    with closing(PgStore(url, ("books", "members"))) as store, psycopg.connect(url, autocommit=True) as admin:
        store.update(lambda txn: txn.insert("books", {"title": "tables made"}))
        admin.execute(
            "CREATE TABLE seen (query text);"
            "CREATE FUNCTION remember() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO seen VALUES (current_query()); RETURN NEW; END $$;"
            "CREATE TRIGGER remember BEFORE INSERT ON library_changes FOR EACH ROW EXECUTE FUNCTION remember()"
        )
        store.update(
            lambda txn: txn.insert("members", {"email": "secret-reader@example.org", "password": "$argon2id$x"})
        )
        queries = [row[0] for row in admin.execute("SELECT query FROM seen").fetchall()]
        assert queries and not [q for q in queries if "secret-reader" in q or "argon2" in q]


def test_files_reach_every_server_and_one_removed_is_never_put_back(tmp_path):
    """A commit reads the files folder only when it changed (or changed so recently that a file
    written in the same tick of the file system's clock would leave its time as it was); a file
    removed leaves a tombstone, so a server's old copy is removed, not shared again."""
    from library.records import COLLECTIONS
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    one = PgStore(url, COLLECTIONS, directory=tmp_path / "one")
    two = PgStore(url, COLLECTIONS, directory=tmp_path / "two")
    try:
        uploads = tmp_path / "one" / "uploads"
        uploads.mkdir()
        one.update(lambda txn: txn.insert("books", {"title": "A"}))  # a look: nothing to share
        tick = uploads.stat().st_mtime_ns
        (uploads / "cover.png").write_bytes(PNG)
        os.utime(uploads, ns=(tick, tick))  # as a change in the same tick leaves it
        one.update(lambda txn: txn.insert("books", {"title": "B"}))
        two.snapshot()
        assert (tmp_path / "two" / "uploads" / "cover.png").read_bytes() == PNG
        stale = (tmp_path / "two" / "uploads" / "cover.png").read_bytes()
        one.remove_file("uploads/cover.png")  # removed on one: gone from every server at its next commit
        one.update(lambda txn: txn.insert("books", {"title": "C"}))
        two.snapshot()
        assert not (tmp_path / "two" / "uploads" / "cover.png").exists()
        two.close()
        (tmp_path / "two" / "uploads" / "cover.png").write_bytes(stale)  # a copy left while it was down
        two = PgStore(url, COLLECTIONS, directory=tmp_path / "two")
        assert not (tmp_path / "two" / "uploads" / "cover.png").exists()  # not put back into the database
        two.update(lambda txn: txn.insert("books", {"title": "D"}))
        with psycopg.connect(url) as conn:
            kept = conn.execute("SELECT data FROM library_files WHERE name = 'uploads/cover.png'").fetchall()
        assert kept in ([], [(None,)])
    finally:
        one.close()
        two.close()


def test_a_folder_emptied_by_hand_removes_nothing_from_the_database(tmp_path):
    """The folder is a cache: a file missing from it (an emptied volume, a cache cleared by hand)
    is not a removal, and no other server loses its copy."""
    from library.records import COLLECTIONS
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    one = PgStore(url, COLLECTIONS, directory=tmp_path / "one")
    two = PgStore(url, COLLECTIONS, directory=tmp_path / "two")
    try:
        (tmp_path / "one" / "uploads").mkdir()
        (tmp_path / "one" / "uploads" / "cover.png").write_bytes(PNG)
        one.update(lambda txn: txn.insert("books", {"title": "A"}))
        two.snapshot()
        (tmp_path / "two" / "uploads" / "cover.png").unlink()  # by hand
        two.update(lambda txn: txn.insert("books", {"title": "B"}))
        one.snapshot()
        assert (tmp_path / "one" / "uploads" / "cover.png").read_bytes() == PNG
        with psycopg.connect(url) as conn:
            kept = conn.execute("SELECT data FROM library_files WHERE name = 'uploads/cover.png'").fetchone()
        assert bytes(kept[0]) == PNG
        two.close()
        two = PgStore(url, COLLECTIONS, directory=tmp_path / "two")  # a restart fetches it again
        assert (tmp_path / "two" / "uploads" / "cover.png").read_bytes() == PNG
    finally:
        one.close()
        two.close()


def test_servers_starting_together_without_a_key_make_one_signing_key(tmp_path):
    """Two servers that opened a new database before either made its signing key (as when they
    start at the same moment) end with the one key the first made, not one each."""
    from library import auth
    from library.records import COLLECTIONS
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    one = PgStore(url, COLLECTIONS, directory=tmp_path / "one")
    two = PgStore(url, COLLECTIONS, directory=tmp_path / "two")  # opened before one has a key
    try:
        with one.sharing_files():
            first = auth.load_secret("", tmp_path / "one")
        with two.sharing_files():
            second = auth.load_secret("", tmp_path / "two")
        assert second == first
        assert (tmp_path / "two" / auth.SECRET_FILE).read_bytes().strip() == first
    finally:
        one.close()
        two.close()


def test_every_connection_of_a_server_finds_a_silent_database_host_within_seconds(tmp_path):
    """TCP keepalives and a user timeout on the pool's, the check's and the commit's connections (a
    host that stops answering is given up on within half a minute, not the system's minutes),
    unless the URL sets its own."""
    from storage.postgres import PgStore

    url = fresh_database(str(tmp_path))
    own = url + "?keepalives_idle=42"
    with closing(PgStore(url, ("books",))) as store, closing(PgStore(own, ("books",))) as other:
        store.update(lambda txn: txn.insert("books", {"title": "one"}))
        store.snapshot()
        with store._conn() as pooled:
            dsns = [store._check_conn.info.dsn, store._commit_conn.info.dsn, pooled.info.dsn]
        for dsn in dsns:
            assert "keepalives=1" in dsn and "keepalives_idle=10" in dsn and "keepalives_count=3" in dsn
            assert "tcp_user_timeout=30000" in dsn
        other.snapshot()
        assert "keepalives_idle=42" in other._check_conn.info.dsn


def test_a_commit_works_on_a_socket_numbered_past_1024(tmp_path):
    """A busy server process holds many files and sockets: waiting for a commit's answers must not
    depend on the socket's number (select() refuses numbers from 1024 on)."""
    import resource

    from storage.postgres import PgStore

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open {hard} files at most")
    url = fresh_database(str(tmp_path))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(open(os.devnull, "rb"))  # noqa: SIM115 - closed below
        with closing(PgStore(url, ("books",))) as store:
            assert store.update(lambda txn: txn.insert("books", {"title": "late"}))["title"] == "late"
            assert store._commit_conn.pgconn.socket >= 1024
            assert [b["title"] for b in store.snapshot().records("books").values()] == ["late"]
    finally:
        for f in held:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
