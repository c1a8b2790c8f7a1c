"""What the service writes is private to its user: the data folder 0700, its files 0600 (0750 / 0640
when shared with the group), whatever umask the user's shell had."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from batch_pipeline.core.storage import write_text_atomic
from batch_pipeline_tests.support.models import PROJECT_ROOT

# A process of the service, started from a shell with the usual umask 022: it sets its own umask first
# (as `make run`, the shim, run workers and engine hosts do), then the shim takes an upload, a run
# writes a chunk and the output files.
_SERVICE = """
import os, sys
from pathlib import Path
os.umask(0o022)
from dagster import DagsterInstance
from fastapi.testclient import TestClient
from batch_pipeline.api.app import create_app
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.privacy import apply_umask, private_folder
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import write_output_files
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.shim_client import answer_rows, jsonl_bytes

settings = Settings()
apply_umask(settings.share_with_group)
layout = DataLayout(private_folder(settings.data_dir))
Path(sys.argv[1]).mkdir()
instance = DagsterInstance.local_temp(sys.argv[1])
with TestClient(create_app(settings, instance, refresh_interval_seconds=3600), base_url="http://localhost") as client:
    upload = client.post("/v1/files", files={"file": ("a.jsonl", jsonl_bytes([request_line("a")]), "application/jsonl")},
                         data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
paths = layout.responses("a-0000000001", MODEL)
ChunkStore(paths.chunks).write(0, answer_rows({0: "a"}))
write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
"""


def _run_service(tmp_path: Path, **environment: str) -> Path:
    data = tmp_path / "data"
    env = {**os.environ, "BATCH_PIPELINE_DATA": str(data), "PYTHONPATH": str(PROJECT_ROOT), **environment}
    subprocess.run([sys.executable, "-c", _SERVICE, str(tmp_path / "dagster_home")], env=env, cwd=PROJECT_ROOT,
                   check=True, timeout=300)
    return data


def _modes(data: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(data.stat().st_mode)}
    for path in data.rglob("*"):
        found[str(path.relative_to(data))] = stat.S_IMODE(path.stat().st_mode)
    return found


def _expect(modes: dict[str, int], data: Path, folder_mode: int, file_mode: int) -> None:
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (folder_mode if (data / name).is_dir() else file_mode)}
    assert not wrong, f"expected folders {oct(folder_mode)} and files {oct(file_mode)}: {wrong}"


def test_a_fresh_data_folder_is_private_to_the_services_user(tmp_path):
    data = _run_service(tmp_path)
    modes = _modes(data)
    names = set(modes)
    assert "shim/shim.sqlite3" in names and any(name.startswith("shim/files/file-") for name in names)
    assert any(name.endswith(".parquet") and "chunk" in name for name in names)
    assert any(name.endswith("output.jsonl") for name in names), names
    _expect(modes, data, 0o700, 0o600)


def test_sharing_with_the_group_gives_it_read_access_only(tmp_path):
    data = _run_service(tmp_path, BATCH_PIPELINE_SHARE_WITH_GROUP="1")
    _expect(_modes(data), data, 0o750, 0o640)


@pytest.mark.parametrize("lax_umask", [0o022, 0o000])
def test_atomic_writes_set_their_mode_whatever_the_umask(tmp_path, lax_umask):
    """A process that never set its umask (a script, a library caller) still writes private files."""
    previous = os.umask(lax_umask)
    try:
        write_text_atomic(tmp_path / "output.jsonl", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "output.jsonl").stat().st_mode) & 0o077 in (0, 0o040)
    assert not stat.S_IMODE((tmp_path / "output.jsonl").stat().st_mode) & 0o007
