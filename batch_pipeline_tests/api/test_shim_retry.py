"""Retrying a batch's failed lines (`POST /v1/batches/{id}/retry`), the merged results of a retry chain
(`GET /v1/batches/{id}/results`) and `batch-pipeline retry`: the shim in process, GPU runs faked by
their chunks on disk."""

import json

import httpx
import pytest
from dagster import DagsterRun, DagsterRunStatus
from openai import OpenAI

from batch_pipeline.api.retries import line_codes, merge, newest_attempts, original_lines
from batch_pipeline.cli import shim
from batch_pipeline.cli.main import main
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.protocol.batch import BatchLineError, BatchOutputLine, ResponseEnvelope
from batch_pipeline.protocol.errors import error_body
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.shim_client import (
    answer_rows,
    create_batch,
    jsonl_bytes,
    shim_client,
    upload_file,
    validate_batch,
)

OK = "ok"


def _failure(index: int, custom_id: str, status: int, code: str) -> ResultRow:
    body = error_body(f"failed with {code}", code=code).model_dump()
    return ResultRow(row_index=index, custom_id=custom_id, line_id=f"batch_req_{custom_id}", request_id="req",
                     status_code=status, body_json=json.dumps(body), error_code=code, error_message="failed")


def _ran(pipeline, instance, client, batch_id: str, outcomes: dict[str, object]) -> dict:
    """The batch validated and run: each custom_id (in input order) answered (OK) or failed with
    (status, code). Returns the batch as the API then shows it."""
    dataset = validate_batch(pipeline, instance, client, batch_id)
    rows = [answer_rows({index: custom_id})[0] if outcome == OK else _failure(index, custom_id, *outcome)
            for index, (custom_id, outcome) in enumerate(outcomes.items())]
    paths = pipeline.layout.responses(dataset, MODEL)
    ChunkStore(paths.chunks).write(0, rows)
    write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
    instance.add_run(DagsterRun(job_name="generate_responses", status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": f"{dataset}|{MODEL}"}))
    batch = client.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "completed"
    return batch


def _parent(client, ids, **fields) -> dict:
    return create_batch(client, upload_file(client, [request_line(custom_id) for custom_id in ids]).json()["id"],
                   **fields).json()


def _retry(client, batch_id: str, **body):
    return client.post(f"/v1/batches/{batch_id}/retry", json=body or None)


def _results(client, batch_id: str) -> dict[str, dict]:
    response = client.get(f"/v1/batches/{batch_id}/results")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in response.text.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines)  # one line per custom_id
    return by_id


def _outcome(line: dict) -> object:
    return OK if line["response"]["status_code"] == 200 else line["response"]["body"]["error"]["code"]


def test_a_retry_is_a_linked_child_of_the_original_failed_lines(client, pipeline, instance):
    parent = _parent(client, ["r0", "r1", "r2", "r3"], metadata={"team": "search"})
    _ran(pipeline, instance, client, parent["id"],
         {"r0": OK, "r1": (400, "invalid_value"), "r2": OK, "r3": (500, "engine_failed")})
    child = _retry(client, parent["id"]).json()
    assert child["status"] == "validating" and child["id"] != parent["id"]
    assert (child["endpoint"], child["completion_window"]) == (parent["endpoint"], parent["completion_window"])
    assert child["metadata"] == {"team": "search", "retry_of": parent["id"]}
    assert client.get(f"/v1/batches/{parent['id']}").json()["metadata"] == {"team": "search",
                                                                          "retried_by": child["id"]}
    # The parent's own request lines, byte for byte, not the error lines.
    assert client.get(f"/v1/files/{child['input_file_id']}/content").content == \
        jsonl_bytes([request_line("r1"), request_line("r3")])
    # Deterministic requests, yet generated afresh: reusing results would hand back the same failures.
    store = client.app.state.service.store
    again = _retry(client, parent["id"]).json()
    assert len({store.batch(batch_id)[1] for batch_id in (parent["id"], child["id"], again["id"])}) == 3
    assert client.get(f"/v1/batches/{parent['id']}").json()["metadata"]["retried_by"] == again["id"]


def test_an_expired_batch_retries_the_requests_it_never_ran(pipeline, instance):
    with shim_client(pipeline, instance, shim_completion_window_seconds=0) as client:
        parent = _parent(client, ["r0", "r1", "r2"])
        dataset = validate_batch(pipeline, instance, client, parent["id"])
        ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks).write(0, answer_rows({1: "r1"}))
        assert client.get(f"/v1/batches/{parent['id']}").json()["status"] == "expired"
        child = _retry(client, parent["id"], codes=["batch_expired"]).json()
        assert client.get(f"/v1/files/{child['input_file_id']}/content").content == \
            jsonl_bytes([request_line("r0"), request_line("r2")])
        # The retry expires too (a zero window): r0 and r2 keep their newest error, r1 its answer.
        validate_batch(pipeline, instance, client, child["id"])
        retried = client.get(f"/v1/batches/{child['id']}").json()
        assert retried["status"] == "expired"
        retried_lines = client.get(f"/v1/files/{retried['error_file_id']}/content").text
        merged = _results(client, parent["id"])
    assert {merged["r0"]["id"], merged["r2"]["id"]} == {json.loads(line)["id"] for line in retried_lines.splitlines()}
    assert {custom_id: line["error"]["code"] if line["error"] else OK for custom_id, line in merged.items()} == \
        {"r0": "batch_expired", "r1": OK, "r2": "batch_expired"}


@pytest.mark.parametrize("codes, retried", [
    (["500"], ["r3"]), ([400], ["r1"]), (["invalid_value", "engine_failed"], ["r1", "r3"]),
    (["engine_failed", "no_such_code"], ["r3"]),
])
def test_codes_choose_the_lines(client, pipeline, instance, codes, retried):
    parent = _parent(client, ["r0", "r1", "r2", "r3"])
    _ran(pipeline, instance, client, parent["id"],
         {"r0": OK, "r1": (400, "invalid_value"), "r2": OK, "r3": (500, "engine_failed")})
    child = _retry(client, parent["id"], codes=codes).json()
    content = client.get(f"/v1/files/{child['input_file_id']}/content").text
    assert [json.loads(line)["custom_id"] for line in content.splitlines()] == retried


def test_results_follow_the_newest_finished_retry(client, pipeline, instance):
    parent = _parent(client, ["r0", "r1", "r2", "r3"])
    _ran(pipeline, instance, client, parent["id"],
         {"r0": OK, "r1": (500, "engine_failed"), "r2": (500, "engine_failed"), "r3": (400, "invalid_value")})
    first = _retry(client, parent["id"]).json()
    assert {k: _outcome(v) for k, v in _results(client, parent["id"]).items()} == \
        {"r0": OK, "r1": "engine_failed", "r2": "engine_failed", "r3": "invalid_value"}  # the retry has not run
    _ran(pipeline, instance, client, first["id"],
         {"r1": OK, "r2": (500, "timeout"), "r3": (400, "still_invalid")})
    second = _retry(client, first["id"]).json()
    assert second["metadata"] == {"retry_of": first["id"]}
    assert client.get(f"/v1/batches/{first['id']}").json()["metadata"] == {"retry_of": parent["id"],
                                                                         "retried_by": second["id"]}
    _ran(pipeline, instance, client, second["id"], {"r2": OK, "r3": (400, "invalid_again")})

    merged = _results(client, parent["id"])
    assert {k: _outcome(v) for k, v in merged.items()} == \
        {"r0": OK, "r1": OK, "r2": OK, "r3": "invalid_again"}
    lines = {batch["id"]: {json.loads(line)["id"] for name in ("output_file_id", "error_file_id")
                           if (file_id := client.get(f"/v1/batches/{batch['id']}").json()[name])
                           for line in client.get(f"/v1/files/{file_id}/content").text.splitlines()}
             for batch in (parent, first, second)}
    assert merged["r0"]["id"] in lines[parent["id"]] and merged["r1"]["id"] in lines[first["id"]]
    assert {merged["r2"]["id"], merged["r3"]["id"]} <= lines[second["id"]]
    assert set(_results(client, first["id"])) == {"r1", "r2", "r3"}  # a child's own merged view


def test_refusals_are_openai_shaped(client, pipeline, instance):
    def error(response, status: int) -> dict:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        return response.json()["error"]

    assert error(_retry(client, "batch_nope"), 404)["code"] == "batch_not_found"
    assert error(client.get("/v1/batches/batch_nope/results"), 404)["code"] == "batch_not_found"
    running = _parent(client, ["a"])
    assert "'validating'" in error(_retry(client, running["id"]), 409)["message"]
    assert error(client.get(f"/v1/batches/{running['id']}/results"), 409)["code"] == "batch_not_finished"

    clean = _parent(client, ["a", "b"])
    _ran(pipeline, instance, client, clean["id"], {"a": OK, "b": OK})
    assert error(_retry(client, clean["id"]), 400)["code"] == "nothing_to_retry"
    assert _results(client, clean["id"]).keys() == {"a", "b"}

    invalid = create_batch(client, upload_file(client, [request_line("x", model="gpt-4o")]).json()["id"]).json()
    validate_batch(pipeline, instance, client, invalid["id"])
    assert client.get(f"/v1/batches/{invalid['id']}").json()["status"] == "failed"
    assert "input failed validation" in error(_retry(client, invalid["id"]), 400)["message"]

    full = _parent(client, ["a", "b"], metadata={f"k{i}": "v" for i in range(16)})
    _ran(pipeline, instance, client, full["id"], {"a": OK, "b": (400, "invalid_value")})
    refused = error(_retry(client, full["id"]), 400)
    assert refused["param"] == "metadata" and "16" in refused["message"] and "retried_by" in refused["message"]
    assert error(_retry(client, full["id"], codes=["400"], extra=1), 400)["param"] == "extra"
    assert error(_retry(client, full["id"], codes="400"), 400)["param"] == "codes"


def test_a_batch_with_fifteen_pairs_can_be_retried_again_and_again(client, pipeline, instance):
    parent = _parent(client, ["a", "b"], metadata={f"k{i}": "v" for i in range(15)})
    _ran(pipeline, instance, client, parent["id"], {"a": OK, "b": (400, "invalid_value")})
    first, second = (_retry(client, parent["id"]).json() for _ in range(2))
    assert len(second["metadata"]) == 16 and second["metadata"]["retry_of"] == parent["id"]
    assert client.get(f"/v1/batches/{parent['id']}").json()["metadata"]["retried_by"] == second["id"] != first["id"]


def _output_line(custom_id: str, status: int | None, code: str | None = None) -> BatchOutputLine:
    if status is None:
        return BatchOutputLine(id="l", custom_id=custom_id, response=None,
                               error=BatchLineError(code=code, message="m"))
    body = {"ok": True} if status == 200 else error_body("m", code=code).model_dump()
    return BatchOutputLine(id="l", custom_id=custom_id,
                           response=ResponseEnvelope(status_code=status, request_id="r", body=body))


def test_codes_name_the_status_or_the_error_code():
    assert line_codes(_output_line("a", 400, "invalid_value")) == {"400", "invalid_value"}
    assert line_codes(_output_line("a", None, "batch_expired")) == {"batch_expired"}
    assert line_codes(_output_line("a", 200)) == {"200"}


def test_original_lines_keep_the_bytes_of_the_wanted_lines():
    lines = [b'{"custom_id": "a", "body": {}}\n', b"\n", b'{"custom_id":"b","body":{"x":1}}']
    assert list(original_lines(lines, {"b"})) == [b'{"custom_id":"b","body":{"x":1}}\n']


def test_the_newest_attempt_of_each_line_wins():
    parent_failed = ["b", "c", "d"]
    retries = [[("b", False), ("c", True), ("d", True)],  # first retry of b, c, d
               [("c", False), ("zz", False)],             # second: c only; zz was never the parent's
               [("d", False)]]                            # d did not fail at the second level: ignored
    newest = newest_attempts(parent_failed, retries)
    assert newest == {"b": 1, "c": 2, "d": 1}
    levels = [[("a", b"a0"), ("b", b"b0"), ("c", b"c0"), ("d", b"d0")],
              [("b", b"b1"), ("c", b"c1"), ("d", b"d1")], [("c", b"c2"), ("zz", b"zz2")], [("d", b"d3")]]
    assert list(merge(levels, newest)) == [b"a0", b"b1", b"d1", b"c2"]


def test_the_retry_command_prints_the_child(client, pipeline, instance, monkeypatch, capsys):
    parent = _parent(client, ["a", "b", "c"])
    _ran(pipeline, instance, client, parent["id"], {"a": (500, "engine_failed"), "b": OK, "c": (400, "bad")})
    official = OpenAI(base_url="http://localhost/v1", api_key="k", http_client=client, max_retries=0)
    monkeypatch.setattr(shim, "client", lambda settings, args: official)
    monkeypatch.setenv("BATCH_PIPELINE_DATA", pipeline.data_dir)
    with pytest.raises(SystemExit) as done:
        main(["retry", parent["id"], "--codes", "bad"])
    child_id = capsys.readouterr().out.strip()
    assert done.value.code == 0
    assert client.get(f"/v1/batches/{child_id}").json()["metadata"]["retry_of"] == parent["id"]
    with pytest.raises(SystemExit) as refused:
        main(["retry", parent["id"], "--codes", "404"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.startswith(f"batch-pipeline retry: error: No line of batch {parent['id']}")
    # As docs/api.md calls them with the official client.
    every = official.post(f"/batches/{parent['id']}/retry", cast_to=httpx.Response, body={}).json()
    assert every["metadata"] == {"retry_of": parent["id"]}
    merged = official.get(f"/batches/{parent['id']}/results", cast_to=httpx.Response).text
    assert sorted(json.loads(line)["custom_id"] for line in merged.splitlines()) == ["a", "b", "c"]


def test_a_failed_creation_leaves_no_retry_input(client, pipeline, instance, monkeypatch):
    parent = _parent(client, ["a", "b"])
    _ran(pipeline, instance, client, parent["id"], {"a": OK, "b": (400, "invalid_value")})
    service = client.app.state.service
    files = client.get("/v1/files").json()["data"]

    def broken_registry(*args, **kwargs):
        raise RegistryError("the registry does not parse")

    monkeypatch.setattr(service, "create_batch", broken_registry)
    response = _retry(client, parent["id"])
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert client.get("/v1/files").json()["data"] == files
    assert "retried_by" not in (client.get(f"/v1/batches/{parent['id']}").json()["metadata"] or {})


def test_lineage_a_user_wrote_in_a_loop_ends(client, pipeline, instance):
    first = _parent(client, ["a", "b"])
    _ran(pipeline, instance, client, first["id"], {"a": OK, "b": (400, "invalid_value")})
    second = _parent(client, ["b"], metadata={"retry_of": first["id"], "retried_by": first["id"]})
    _ran(pipeline, instance, client, second["id"], {"b": OK})
    store = client.app.state.service.store
    looped = store.batch(first["id"])[0]
    store.save_batch(looped.model_copy(update={"metadata": {"retry_of": second["id"], "retried_by": second["id"]}}))
    assert {k: _outcome(v) for k, v in _results(client, first["id"]).items()} == {"a": OK, "b": OK}
