"""Settings as a person meets them: a bad value names its variable, a misspelt variable is warned about
with the nearest valid name, `.env` is read, and only `BATCH_PIPELINE_DATA` sets the data folder."""

import json
import logging
import os
import subprocess
import sys

import pytest

from batch_pipeline.core.settings import SettingsError, known_variables, load_settings, unknown_variables


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    for name in [name for name in os.environ if name.startswith("BATCH_PIPELINE_")]:
        monkeypatch.delenv(name)


def test_a_bad_value_names_the_variable_and_the_value(monkeypatch):
    monkeypatch.setenv("BATCH_PIPELINE_SHIM_PORT", "eighty")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "BATCH_PIPELINE_SHIM_PORT='eighty'" in str(raised.value) and "integer" in str(raised.value)


def test_a_secret_value_is_not_repeated_in_the_error(monkeypatch):
    monkeypatch.setenv("BATCH_PIPELINE_WEBHOOK_URL", "https://example.test/hook")
    monkeypatch.setenv("BATCH_PIPELINE_WEBHOOK_SECRET", "whsec_not*base64")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "BATCH_PIPELINE_WEBHOOK_SECRET" in str(raised.value) and "not*base64" not in str(raised.value)


def test_a_service_ends_with_one_line_not_a_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "BATCH_PIPELINE_CHUNK_SIZE": "many", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "batch_pipeline.tools.prepare_instance"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "prepare_instance: error: invalid setting: BATCH_PIPELINE_CHUNK_SIZE='many': Input should be a valid "
        "integer, unable to parse string as an integer"]


def test_a_misspelt_variable_is_warned_about_with_the_nearest_name(monkeypatch, caplog):
    monkeypatch.setenv("BATCH_PIPELINE_SHIM_PROT", "5000")
    monkeypatch.setenv("BATCH_PIPELINE_CHROMIUM", "/usr/bin/chromium")  # the UI test's, not a setting
    with caplog.at_level(logging.WARNING, logger="batch_pipeline"):
        settings = load_settings()
    assert settings.shim_port == 4080
    assert caplog.messages == ["BATCH_PIPELINE_SHIM_PROT is not a batch_pipeline setting and is ignored; "
                               "did you mean BATCH_PIPELINE_SHIM_PORT?"]


def test_every_setting_has_its_variable_and_nothing_else_is_flagged():
    assert {"BATCH_PIPELINE_DATA", "DAGSTER_HOME", "BATCH_PIPELINE_SHIM_PORT", "BATCH_PIPELINE_LOG_LEVEL"} <= known_variables()
    assert unknown_variables(["BATCH_PIPELINE_DATA", "HOME", "DATA_DIR"]) == []
    assert unknown_variables(["BATCH_PIPELINE_DATA_DIR"]) == [
        "BATCH_PIPELINE_DATA_DIR is not a batch_pipeline setting and is ignored; did you mean BATCH_PIPELINE_DATA?"]


def test_only_the_prefixed_variable_sets_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", "/somewhere/else")
    assert load_settings().data_dir == (tmp_path / "data").resolve()
    monkeypatch.setenv("BATCH_PIPELINE_DATA", str(tmp_path / "mine"))
    assert load_settings().data_dir == tmp_path / "mine"


def test_dot_env_is_read_and_the_environment_wins(monkeypatch, tmp_path, caplog):
    (tmp_path / ".env").write_text("BATCH_PIPELINE_SHIM_PORT=5050\nBATCH_PIPELINE_CHUNK_SIZE=50\n"
                                   "BATCH_PIPELINE_CHUNK_SECOND=3\nOTHER_TOOL=1\n")
    monkeypatch.setenv("BATCH_PIPELINE_CHUNK_SIZE", "20")
    with caplog.at_level(logging.WARNING, logger="batch_pipeline"):
        settings = load_settings()
    assert (settings.shim_port, settings.chunk_size) == (5050, 20)
    assert caplog.messages == ["BATCH_PIPELINE_CHUNK_SECOND is not a batch_pipeline setting and is ignored; "
                               "did you mean BATCH_PIPELINE_CHUNK_SECONDS?"]


def test_json_logs_for_our_loggers_and_libraries_kept_quiet(capsys):
    from batch_pipeline.core.logs import configure_logging

    configure_logging("DEBUG", "json")
    try:
        logging.getLogger("batch_pipeline.api").debug("ready on %s", "127.0.0.1")
        logging.getLogger("alembic.runtime").info("setup plugin")
        [line] = capsys.readouterr().err.splitlines()
        entry = json.loads(line)
        assert (entry["level"], entry["logger"], entry["message"]) == ("DEBUG", "batch_pipeline.api", "ready on 127.0.0.1")
    finally:
        logging.basicConfig(force=True)
        logging.getLogger("batch_pipeline").setLevel(logging.NOTSET)
