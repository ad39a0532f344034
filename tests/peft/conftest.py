import pytest


@pytest.fixture(autouse=True)
def _save_dir(tmp_path, monkeypatch):
    """Recipes default their output folders to $SAVE_DIR: keep every test's runs in its own folder."""
    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "save_dir"))
