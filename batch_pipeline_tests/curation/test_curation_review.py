"""Curation's pure parts: the export sheet, review validation messages, and the fine-tuning lines."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_pipeline.curation.export import review_export
from batch_pipeline.curation.finetune import curated_examples, write_curated
from batch_pipeline.curation.review import ReviewError, parse_review, read_review_file, review_table

IDS = {"q1", "q2", "q3"}


def _comparison() -> pa.Table:
    return pa.table({
        "custom_id": ["q1", "q2", "q3"], "prompt": ["user: a", "user: b", "user: c"],
        "messages_json": ["[]"] * 3,
        "output:A": ["A1", "A2", None], "completion_tokens:A": [1, 1, None],
        "finish_reason:A": ["stop", "stop", None], "error:A": [None, None, "bad request"],
        "output:B": ["B1", "B2", "B3"], "completion_tokens:B": [1, 1, 1],
        "finish_reason:B": ["stop"] * 3, "error:B": [None] * 3,
    })


def _records(**changes: dict) -> list[dict]:
    records = review_export(_comparison()).to_pylist()
    for row, values in changes.items():
        records[int(row.removeprefix("row")) - 1].update(values)
    return records


def test_export_has_inputs_each_models_answer_and_empty_review_columns():
    export = review_export(_comparison())
    assert export.column_names == ["custom_id", "prompt", "output:A", "output:B", "chosen_model", "rating", "keep", "notes"]
    assert export.column("output:A").to_pylist() == ["A1", "A2", None]
    assert all(export.column(name).null_count == 3 for name in ["chosen_model", "rating", "keep", "notes"])


def test_export_carries_over_accepted_reviews():
    accepted = review_table(parse_review(_records(row2={"chosen_model": "B", "keep": True, "rating": 4}), IDS))
    export = review_export(_comparison(), accepted)
    assert export.column("chosen_model").to_pylist() == [None, "B", None]
    assert export.column("rating").to_pylist() == [None, 4, None]


def _problems(records: list[dict], ids: set[str] = IDS) -> list[str]:
    with pytest.raises(ReviewError) as caught:
        parse_review(records, ids)
    return caught.value.problems


def test_each_problem_names_its_row_and_column():
    problems = _problems(_records(
        row1={"chosen_model": "foo", "keep": True},
        row2={"rating": 7, "keep": "maybe"},
        row3={"chosen_model": "A", "keep": True},
    ))
    assert problems == [
        "row 1, column chosen_model: 'foo' is not one of the models in this export: A, B",
        "row 2, column rating: Input should be less than or equal to 5",
        "row 2, column keep: Input should be a valid boolean, unable to interpret input",
        "row 3, column output:A: empty, so there is no answer to keep (that model failed this request)",
    ]


def test_keeping_needs_a_chosen_model_and_ids_must_be_known_and_unique():
    records = _records(row1={"keep": True})
    records[2]["custom_id"] = "q1"
    records.append({**records[1], "custom_id": "zzz"})
    assert _problems(records) == [
        "row 1, column chosen_model: keep is true, so choose the model whose answer to keep",
        "row 3, column custom_id: 'q1' already appears on row 1",
        "row 4, column custom_id: 'zzz' is not a request of this dataset",
    ]


def test_missing_columns_are_reported_before_any_row():
    records = [{k: v for k, v in row.items() if k not in {"keep", "output:A", "output:B"}} for row in _records()]
    assert _problems(records) == ["column keep is missing (start from the export file)",
                                  "column output:<model> is missing (start from the export file)"]


def test_csv_cells_are_text_and_blanks_mean_empty(tmp_path):
    path = tmp_path / "reviewed.csv"
    frame = pd.DataFrame(_records(row1={"chosen_model": "B", "keep": "yes", "rating": "5", "notes": "  "},
                                  row2={"keep": "false"}))
    frame.to_csv(path, index=False)
    rows = parse_review(read_review_file(path), IDS)
    assert [(r.chosen_model, r.keep, r.rating, r.notes) for r in rows] == [
        ("B", True, 5, None), (None, False, None, None), (None, None, None, None)]


def test_unreadable_and_unknown_files_fail_in_one_line(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ReviewError, match="x.parquet: cannot be read"):
        read_review_file(bad)
    with pytest.raises(ReviewError, match="must be a .parquet or .csv file"):
        read_review_file(tmp_path / "x.xlsx")


def test_kept_rows_become_chat_finetuning_lines_with_the_edited_answer(tmp_path):
    rows = parse_review(_records(row1={"chosen_model": "B", "keep": True, "rating": 5, "output:B": "B1, corrected"},
                                 row2={"chosen_model": "A", "keep": False}), IDS)
    messages = {cid: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": cid}] for cid in IDS}
    examples = curated_examples(rows, messages)
    write_curated(examples, tmp_path / "curated.parquet", tmp_path / "finetune.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "finetune.jsonl").read_text().splitlines()]
    assert lines == [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"},
                                   {"role": "assistant", "content": "B1, corrected"}]}]
    curated = pq.read_table(tmp_path / "curated.parquet").to_pylist()
    assert [(r["custom_id"], r["chosen_model"], r["rating"], r["answer"]) for r in curated] == [
        ("q1", "B", 5, "B1, corrected")]
    assert not list(tmp_path.glob("*.tmp-*"))
