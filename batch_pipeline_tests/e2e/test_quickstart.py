"""The README's quick start, run as written: every block marked `<!-- quickstart-test -->` (shell lines
and the `openai` snippet) against `batch-pipeline serve` with the real Dagster daemon and vLLM engine,
from a folder laid out as after `make run` (`.venv/bin/batch-pipeline`, `data/`). The only change is
the API's port in the snippet (the test's free port in place of 4080)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

from batch_pipeline.core.loopback import answers, free_port
from batch_pipeline.core.names import PROGRESS_TAG
from batch_pipeline.queue.runs import is_gpu_run
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.models import PROJECT_ROOT
from batch_pipeline_tests.support.processes import processes_mentioning, wait_for

pytestmark = pytest.mark.e2e
_MARKED = re.compile(r"<!-- quickstart-test -->\n```(bash|python)\n(.*?)```", re.DOTALL)


def quickstart_blocks() -> list[tuple[str, str]]:
    return _MARKED.findall((PROJECT_ROOT / "README.md").read_text())


def _project(tmp_path: Path, data_root: Path) -> Path:
    """What a clone looks like after `make run`: the console script in .venv/bin, the data folder."""
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    script = project / ".venv" / "bin" / "batch-pipeline"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m batch_pipeline.cli "$@"\n')
    script.chmod(0o755)
    shutil.copytree(PROJECT_ROOT / "data" / "examples", data_root / "examples")
    (project / "data").symlink_to(data_root)
    return project


def test_the_readme_quick_start_runs_as_written(data_root, tmp_path):
    blocks = quickstart_blocks()
    assert [kind for kind, _ in blocks] == ["bash", "bash", "bash", "python"]
    project = _project(tmp_path, data_root)
    home, port, shim_port = tmp_path / "dagster_home", free_port(), free_port()
    prepare_instance(home, postgres_url=None)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCH_PIPELINE_")},
           "DAGSTER_HOME": str(home), "BATCH_PIPELINE_DATA": str(data_root), "BATCH_PIPELINE_UI_PORT": str(port),
           "BATCH_PIPELINE_SHIM_PORT": str(shim_port), "PYTHONPATH": str(PROJECT_ROOT)}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen([str(project / ".venv" / "bin" / "batch-pipeline"), "serve", "--no-demo"],
                                    cwd=project, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 180, "the webserver", launcher)
        wait_for(lambda: answers(f"http://127.0.0.1:{shim_port}/health"), 60, "the API", launcher)
        outputs = []
        for kind, block in blocks:
            if kind == "bash":
                for line in block.strip().splitlines():
                    done = subprocess.run(["bash", "-c", line], cwd=project, env=env, capture_output=True, text=True,
                                          timeout=900)
                    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                    outputs.append((line, done))
            else:
                snippet = block.replace("127.0.0.1:4080", f"127.0.0.1:{shim_port}")
                done = subprocess.run([sys.executable, "-c", snippet], cwd=project, env=env, capture_output=True,
                                      text=True, timeout=900)
                assert done.returncode == 0, done.stderr
                assert re.search(r'"custom_id": ?"demo-', done.stdout) and "completed" in done.stdout, done.stdout
        said = {line: done for line, done in outputs}
        doctor = said[".venv/bin/batch-pipeline doctor"].stdout
        assert "FAIL" not in doctor and f"127.0.0.1:{shim_port} answers" in doctor
        assert "SmolLM2-135M-Instruct" in said[".venv/bin/batch-pipeline models list"].stdout
        submitted = said[".venv/bin/batch-pipeline submit data/examples/demo.jsonl --wait"]
        assert "requests" in submitted.stderr and "completed" in submitted.stderr  # the progress bar
        [output_path] = re.findall(r"^output: (.+)$", submitted.stdout, flags=re.MULTILINE)
        output = [json.loads(line) for line in Path(project / output_path).read_text().splitlines()]
        assert sorted(line["custom_id"] for line in output) == [f"demo-{i:03d}" for i in range(12)]
        assert "GPU queue" in said[".venv/bin/batch-pipeline status"].stdout
        # The inbox file's results land in the outbox under its own name.
        outbox = data_root / "outbox" / "my-first-batch.output.jsonl"
        wait_for(outbox.exists, 600, "the inbox batch in the outbox", launcher)
        assert len(outbox.read_text().splitlines()) == len((data_root / "examples" / "structured.jsonl").read_text().splitlines())
        with DagsterInstance.from_config(str(home)) as instance:
            gpu_runs = [run for run in instance.get_runs() if is_gpu_run(run)]
            assert gpu_runs and all(run.tags.get(PROGRESS_TAG, "").endswith(("s", "unknown")) for run in gpu_runs
                                    if PROGRESS_TAG in run.tags)
            assert any(PROGRESS_TAG in run.tags for run in gpu_runs)
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    text = log_path.read_text()
    # A normal start prints no warning a newcomer would read as an error.
    assert "will not be used" not in text and "superseded" not in text.lower() and "Traceback" not in text, text[-3000:]
    for service in ("dagster-webserver", "dagster-daemon", "api"):
        assert (data_root / "logs" / f"{service}.log").stat().st_size > 0
    leftovers = subprocess.run(["pgrep", "-g", str(launcher.pid)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes left behind: {leftovers}"
    assert not processes_mentioning(data_root)
