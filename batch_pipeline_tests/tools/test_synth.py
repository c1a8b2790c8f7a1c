from batch_pipeline.core.settings import InputLimits
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.tools.synth import write_synthetic_batch


def test_synthetic_batches_are_valid_varied_and_deterministic(tmp_path):
    first = write_synthetic_batch(tmp_path / "a.jsonl", 200, "m", seed=3)
    second = write_synthetic_batch(tmp_path / "b.jsonl", 200, "m", seed=3)
    assert first.read_bytes() == second.read_bytes()
    scan = BatchFileScan(first, {"m"}, InputLimits())
    rows = list(scan.rows())
    assert scan.report().ok and len(rows) == 200
    assert len({row.body_json for row in rows}) > 150
    assert write_synthetic_batch(tmp_path / "c.jsonl", 200, "m", seed=4).read_bytes() != first.read_bytes()
