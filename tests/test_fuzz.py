"""Fuzzing: schemathesis against the /openapi.json of a running server.

Every operation the document describes gets a bounded, deterministic (derandomized) batch of requests,
valid and invalid ones (schemathesis' coverage cases, then Hypothesis fuzzing), sent to a real
gunicorn server. No answer may be a 5xx, and every answer must be documented: its status code, its
media type and its body's schema.

The signed-in run sends a librarian's token, so the routes behind sign-in are exercised beyond
401. A librarian cannot delete members (admins only) nor change their own role, so the fuzzer
cannot sign itself out; logging in with random emails locks out only those emails.

schemathesis runs through its command line, not its pytest plugin: the plugin's lazy loader
(``schemathesis.pytest.from_fixture``, the one that can wait for a server started by a fixture)
sets ``Node._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, gunicorn_server, librarian

CONFIG = """
workers = 1
request-timeout = 30

[generation]
mode = "all"
max-examples = {max_examples}
deterministic = true
database = "none"

[phases]
examples.enabled = true
coverage.enabled = {coverage}
fuzzing.enabled = true
stateful.enabled = false
# The same requests on every run: no values picked from earlier responses, no steering by them.
coverage.extra-data-sources.responses = false
fuzzing.extra-data-sources.responses = false
fuzzing.error-feedback.enabled = false

[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
"""
"""schemathesis.toml for a run: written next to the server's data, so no other one is picked up."""

KNOWN_BUGS = ""
"""Appended to the signed-in run's CONFIG: operations or parameters to leave alone while a bug
found by the fuzzer is being fixed (none now)."""

TIMEOUT = 300
"""Seconds a run may take at most (they take well under a minute); a hung server fails the test."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """One worker on the sample catalogue, so that book ids 1 to 60 exist; yields the port and
    the folder of its data and log."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with gunicorn_server(data, workers=1, LIBRARY_SEED_FILE=str(ROOT / "books.json")) as port:
        yield port, data.parent


def fuzz(
    server: tuple[int, Path], name: str, *options: str, max_examples: int, coverage: bool = True, extra: str = ""
) -> None:
    """Run ``st run`` against the server; fail with its report and the server's errors."""
    port, folder = server
    config = folder / f"{name}.toml"
    config.write_text(CONFIG.format(max_examples=max_examples, coverage=str(coverage).lower()) + extra)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run"]
    command += [f"http://127.0.0.1:{port}/openapi.json", *options]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT)
    if run.returncode == 0:
        print(run.stdout)  # the run's summary, shown by pytest -rP
        return
    log = (folder / f"gunicorn-{port}.log").read_text(errors="replace")
    errors = log[log.find("ERROR") :] if "ERROR" in log else "(none logged)"
    pytest.fail(f"{run.stdout}\n{run.stderr}\n--- server errors ---\n{errors[-20000:]}", pytrace=False)


def operations(port: int) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=30) as response:
        document = json.load(response)
    return [op for path in document["paths"].values() for op in path.values()]


def test_fuzz_signed_in_as_librarian(server: tuple[int, Path]) -> None:
    token = librarian[server[0]]["Authorization"]
    fuzz(server, "librarian", "--header", f"Authorization: {token}", max_examples=25, extra=KNOWN_BUGS)


def test_fuzz_signed_out(server: tuple[int, Path]) -> None:
    """Without a token, the signed-in routes answer documented problems (401)."""
    secured = [op["operationId"] for op in operations(server[0]) if op.get("security")]
    assert secured
    included = [option for op_id in secured for option in ("--include-operation-id", op_id)]
    fuzz(server, "nobody", *included, "--warnings", "off", max_examples=5, coverage=False)
