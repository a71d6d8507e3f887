"""Every setting is documented where people look for it, and settings come from the environment."""

from __future__ import annotations

import pytest

from library_api import SETTINGS, create_app
from tests.conftest import ROOT


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_setting_is_in_the_readme_and_env_example(setting):
    assert f"`LIBRARY_{setting.name}`" in (ROOT / "README.md").read_text()
    assert f"LIBRARY_{setting.name}=" in (ROOT / ".env.example").read_text()


def test_settings_come_from_library_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("LIBRARY_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("LIBRARY_SEED_FILE", "")
    app = create_app()
    assert app.config["DATA_DIR"] == str(tmp_path / "from-env")
    assert (tmp_path / "from-env" / "journal.jsonl").exists()
    assert app.test_client().get("/books").get_json()["total"] == 0
