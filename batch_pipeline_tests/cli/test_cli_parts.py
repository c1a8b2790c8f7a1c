"""The command line's parts as plain functions: the progress line, `submit`'s file handling, `status` of
a dataset from its folder, and one-line errors."""

import io
import json
import subprocess
import sys

import pytest

from batch_pipeline.cli.main import build_parser
from batch_pipeline.cli.progress import progress_line
from batch_pipeline.cli.status import describe_dataset
from batch_pipeline.cli.submit import endpoint_of, with_model
from batch_pipeline.core.storage import write_json_atomic
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.tools.cli import ToolError
from batch_pipeline_tests.support.batches import request_line, write_jsonl
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.results import result


def test_the_progress_line():
    assert progress_line("in_progress", 29, 1, 100, 12.4) == \
        "[#########.....................]  30/100 requests (1 failed)  in_progress  12s"
    assert progress_line("validating", 0, 0, 0, 0) == f"[{'.' * 30}] counting requests  validating  0s"
    assert progress_line("completed", 7, 0, 7, 3).startswith(f"[{'#' * 30}] 7/7 requests  completed")


def test_submit_reads_the_endpoint_and_rewrites_the_model_on_a_copy(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [request_line("a"), request_line("b")])
    before = path.read_bytes()
    assert endpoint_of(path) == "/v1/chat/completions"
    copy = io.BytesIO()
    with_model(path, "other-model", copy)
    assert [json.loads(line)["body"]["model"] for line in copy.read().splitlines()] == ["other-model"] * 2
    assert path.read_bytes() == before


@pytest.mark.parametrize("content, message", [
    ('{"custom_id": "a"\n', "line 1: not valid JSON"),
    ('\n["not", "a", "request"]\n', "line 2: not a batch request line"),
    ("", "the file has no requests"),
])
def test_submit_names_the_line_it_cannot_read(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ToolError, match=message):
        with_model(path, "m", io.BytesIO()) if "no requests" not in message else endpoint_of(path)


def test_status_of_a_dataset_from_its_folder(pipeline):
    layout = pipeline.layout
    failed, running = layout.dataset("bad-0123456789"), layout.dataset("good-0123456789")
    for paths in (failed, running):
        paths.folder.mkdir(parents=True)
        paths.input.write_text("{}\n")
    write_json_atomic(failed.validation, {"file": "bad.jsonl", "lines": 1, "requests": 0, "model": None, "endpoint": None,
                                          "error_count": 1, "errors": [{"code": "invalid_json", "line": 1,
                                                                        "message": "not JSON"}]})
    write_json_atomic(running.validation, {"file": "good.jsonl", "lines": 250, "requests": 250, "model": MODEL, "endpoint": CHAT_COMPLETIONS_URL,
                                           "error_count": 0, "errors": []})
    store = ChunkStore(layout.responses("good-0123456789", MODEL).chunks)
    store.prepare()
    store.write(0, [result(i, "x") for i in range(100)])
    assert "    line 1: [invalid_json] not JSON" in describe_dataset(layout, "bad-0123456789")
    assert f"  {MODEL}: 100/250 rows on disk (queued or generating)" in describe_dataset(layout, "good-0123456789")
    with pytest.raises(ToolError, match="datasets: bad-0123456789, good-0123456789"):
        describe_dataset(layout, "nope")


def test_every_command_has_help_and_a_bad_call_is_one_line(tmp_path):
    parser = build_parser()
    for command in ("serve", "submit", "status", "retry", "models", "run-models", "curate", "doctor"):
        assert parser.parse_args([command, *_minimal(command)]).run
    done = subprocess.run([sys.executable, "-m", "batch_pipeline.cli", "submit", str(tmp_path / "missing.jsonl")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT),
                               "BATCH_PIPELINE_DATA": str(tmp_path)})
    assert (done.returncode, done.stderr) == (2, f"batch-pipeline submit: error: {tmp_path / 'missing.jsonl'}: "
                                                 "file not found\n")


def _minimal(command: str) -> list[str]:
    return {"submit": ["f.jsonl"], "retry": ["batch_x"], "models": ["list"], "run-models": ["--dataset", "d", "--models", "m"],
            "curate": ["--dataset", "d", "--reviewed", "r.csv"]}.get(command, [])
