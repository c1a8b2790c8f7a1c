"""Results while a batch runs: a cell's lines so far (generation.results.CellLines), the API's
`GET /v1/batches/{id}/partial_output`, and an inbox batch's `name.partial.jsonl`."""

import json

import httpx
from dagster import DagsterRun, DagsterRunStatus
from openai import OpenAI

from batch_pipeline.api.partial import LINES_HEADER
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.generation.partial_outbox import PartialOutbox
from batch_pipeline.generation.results import CellLines, write_output_files
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.shim_client import (
    answer_rows,
    create_batch,
    shim_client,
    started_run,
    upload_file,
    validate_batch,
)


def _failure(row_index: int, custom_id: str) -> ResultRow:
    body = {"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": "bad"}}
    return ResultRow(row_index=row_index, custom_id=custom_id, line_id=f"batch_req_e{row_index}",
                     request_id=f"req_e{row_index}", status_code=400, body_json=json.dumps(body),
                     error_code="bad", error_message="no")


def _ids(lines) -> list[str]:
    return [json.loads(line)["custom_id"] if isinstance(line, str | bytes) else line.custom_id for line in lines]


def test_a_growing_cell_shows_each_line_once_in_the_order_it_landed(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.write(0, answer_rows({2: "r2", 0: "r0"}))
    first = CellLines(store, growing=True)
    assert first.count == 2 and _ids(first.lines()) == ["r2", "r0"]
    store.write(1, [_failure(1, "r1"), *answer_rows({0: "r0-again"})])  # a duplicate row is never shown twice
    second = CellLines(store, growing=True)
    assert _ids(second.lines()) == ["r2", "r0", "r1"] and _ids(second.lines(after=first.count)) == ["r1"]
    assert (second.totals.succeeded, second.totals.failed, second.count) == (2, 1, 3)
    # The final files hold the same lines.
    totals = write_output_files(store, tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    files = (tmp_path / "out.jsonl").read_text().splitlines() + (tmp_path / "err.jsonl").read_text().splitlines()
    assert sorted(files) == sorted(line.model_dump_json() for line in second.lines())
    assert totals.rows == second.count


def test_a_ray_block_is_shown_once_every_row_before_it_is_done(tmp_path):
    """Ray actors write their blocks' chunks in any order; a block shown early would let a later one sort
    before lines a reader already counted."""
    store = ChunkStore(tmp_path / "chunks")
    store.write_block(0, answer_rows({0: "r0", 1: "r1"}))
    store.write_block(4, answer_rows({4: "r4", 5: "r5"}))  # rows 2-3 still running elsewhere
    early = CellLines(store, growing=True)
    assert _ids(early.lines()) == ["r0", "r1"] and early.totals.succeeded == 2
    assert CellLines(store).count == 4  # a finished reader (the final files) takes every chunk
    store.write_block(2, answer_rows({2: "r2", 3: "r3"}))
    later = CellLines(store, growing=True)
    assert _ids(later.lines()) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert _ids(later.lines(after=early.count)) == ["r2", "r3", "r4", "r5"]


def test_the_partial_outbox_file_appends_the_new_lines_at_each_chunk(tmp_path):
    store, target = ChunkStore(tmp_path / "chunks"), tmp_path / "outbox" / "q.partial.jsonl"
    target.parent.mkdir()
    target.write_text("an earlier run's file\n")
    partial = PartialOutbox(store, target)
    store.write(0, answer_rows({1: "r1"}))
    partial.refresh()
    assert _ids(target.read_text().splitlines()) == ["r1"]  # written anew on the run's first chunk
    store.write(1, [_failure(0, "r0")])
    partial.refresh()
    assert target.read_text().splitlines() == [line.model_dump_json() for line in CellLines(store).lines()]
    assert [path.name for path in target.parent.iterdir()] == ["q.partial.jsonl"]  # no temp file left


def _partial(client, batch_id: str, after: int | None = None) -> tuple[int, list[str]]:
    response = client.get(f"/v1/batches/{batch_id}/partial_output", params={} if after is None else {"after": after})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return int(response.headers[LINES_HEADER]), response.text.splitlines()


def _file_lines(client, batch: dict) -> list[str]:
    return [line for file_id in (batch["output_file_id"], batch["error_file_id"]) if file_id
            for line in client.get(f"/v1/files/{file_id}/content").text.splitlines()]


def test_partial_output_while_running_then_the_final_files_lines(pipeline, instance):
    with shim_client(pipeline, instance) as client:
        lines = [request_line(f"r{i}") for i in range(4)]
        # Twins share one dataset and its run, which goes on when one of them is cancelled.
        batch, twin = (create_batch(client, upload_file(client, lines).json()["id"]).json() for _ in range(2))
        assert _partial(client, batch["id"]) == (0, [])  # not validated yet
        dataset = validate_batch(pipeline, instance, client, batch["id"])
        started_run(instance, dataset, batch["id"])
        chunks = ChunkStore(pipeline.layout.responses(dataset, MODEL).chunks)
        chunks.write(0, [*answer_rows({2: "r2"}), _failure(0, "r0")])

        count, lines = _partial(client, batch["id"])
        assert count == 2 and _ids(lines) == ["r2", "r0"]
        assert json.loads(lines[0])["response"]["status_code"] == 200
        assert json.loads(lines[1])["response"]["body"]["error"]["code"] == "bad"
        counts = client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]
        assert counts == {"total": 4, "completed": 1, "failed": 1}  # what partial_output can read

        chunks.write(1, answer_rows({1: "r1"}))
        count, new = _partial(client, batch["id"], after=count)
        assert count == 3 and _ids(new) == ["r1"]  # only what landed since the last call
        assert _partial(client, batch["id"], after=10) == (3, [])

        cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        chunks.write(2, answer_rows({3: "r3"}))  # the twin's run goes on: not the cancelled batch's line
        final_count, final = _partial(client, batch["id"])
        assert final_count == 4 and sorted(final) == sorted(_file_lines(client, cancelled))
        # A client that read every line while it ran gets the rest: the request it never ran.
        [rest] = _partial(client, batch["id"], after=count)[1]
        assert json.loads(rest)["custom_id"] == "r3" and json.loads(rest)["error"]["code"] == "batch_cancelled"
        assert _ids(_partial(client, twin["id"])[1]) == ["r2", "r0", "r1", "r3"]


def test_partial_output_of_a_completed_batch_is_its_files(pipeline, instance):
    with shim_client(pipeline, instance) as client:
        batch = create_batch(client, upload_file(client, [request_line(f"r{i}") for i in range(3)]).json()["id"]).json()
        dataset = validate_batch(pipeline, instance, client, batch["id"])
        paths = pipeline.layout.responses(dataset, MODEL)
        ChunkStore(paths.chunks).write(0, [*answer_rows({0: "r0", 2: "r2"}), _failure(1, "r1")])
        write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
        instance.add_run(DagsterRun(job_name="generate_responses", status=DagsterRunStatus.SUCCESS,
                                    tags={"dagster/partition": f"{dataset}|{MODEL}"}))
        completed = client.get(f"/v1/batches/{batch['id']}").json()
        assert completed["status"] == "completed"
        assert completed["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        count, lines = _partial(client, batch["id"])
        assert count == 3 and sorted(lines) == sorted(_file_lines(client, completed))
        assert _ids(lines) == ["r0", "r2", "r1"]  # the order a client polling the running batch saw
        assert _partial(client, batch["id"], after=2)[1] == lines[2:]
        # As docs/api.md reads it, with the openai client's plain `get`.
        openai = OpenAI(base_url="http://localhost/v1", api_key="not-needed", http_client=client)
        page = openai.get(f"/batches/{batch['id']}/partial_output", cast_to=httpx.Response,
                          options={"params": {"after": 1}})
        assert page.text.splitlines() == lines[1:] and page.headers["X-Batch-Lines"] == "3"


def test_partial_output_refuses_unknown_batches_and_bad_cursors(pipeline, instance):
    with shim_client(pipeline, instance) as client:
        missing = client.get("/v1/batches/batch_nope/partial_output")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"
        batch = create_batch(client, upload_file(client, [request_line("a")]).json()["id"]).json()
        for after in ("-1", "two"):
            refused = client.get(f"/v1/batches/{batch['id']}/partial_output", params={"after": after})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "after"
