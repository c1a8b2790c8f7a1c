from batch_pipeline.api.lifecycle import Finish, Observation, decide, wants_results, with_refresh_failure
from batch_pipeline.api.models import BatchObject
from batch_pipeline.intake.validation import LineError, ValidationReport

NOW = 1_000


def _batch(**fields) -> BatchObject:
    base = dict(id="batch_1", endpoint="/v1/chat/completions", input_file_id="file-1", completion_window="24h",
                status="validating", created_at=0, expires_at=5_000)
    return BatchObject(**{**base, **fields})


def _seen(**fields) -> Observation:
    base = dict(validation=ValidationReport(file="f", lines=3, requests=3, model="m", endpoint="/v1/chat/completions",
                                            error_count=0, errors=[]),
                ingest_failed=None, run_status=None, run_will_retry=False, run_id=None, completed=0, failed=0,
                input_tokens=0, output_tokens=0, output_ready=False)
    return Observation(**{**base, **fields})


def test_validating_until_the_report_exists():
    decision = decide(_batch(), _seen(validation=None), NOW)
    assert decision.batch.status == "validating" and decision.finish is None


def test_invalid_file_fails_with_its_line_errors():
    errors = [LineError(code="invalid_json_line", line=2, message="bad")]
    report = ValidationReport(file="f", lines=2, requests=1, model="m", endpoint="/v1/chat/completions", error_count=1,
                              errors=errors)
    decision = decide(_batch(), _seen(validation=report), NOW)
    assert decision.batch.status == "failed" and decision.batch.failed_at == NOW
    assert decision.batch.errors.data == errors


def test_a_file_for_another_endpoint_than_the_batch_fails_it_naming_both():
    report = ValidationReport(file="f", lines=3, requests=3, model="m", endpoint="/v1/completions", error_count=0,
                              errors=[])
    decision = decide(_batch(), _seen(validation=report, run_status="QUEUED"), NOW)
    assert decision.batch.status == "failed"
    [error] = decision.batch.errors.data
    assert error.code == "mismatched_endpoint" and "/v1/completions" in error.message
    assert "/v1/chat/completions" in error.message


def test_in_progress_with_live_counts_while_the_run_works():
    decision = decide(_batch(), _seen(run_status="STARTED", completed=2, failed=1, input_tokens=30,
                                      output_tokens=12, cached_tokens=8), NOW)
    batch = decision.batch
    assert (batch.status, batch.in_progress_at, batch.model) == ("in_progress", NOW, "m")
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 2, "failed": 1}
    assert batch.usage.total_tokens == 42 and batch.usage.input_tokens_details.cached_tokens == 8


def test_finished_output_completes_the_batch():
    assert decide(_batch(status="in_progress"), _seen(run_status="SUCCESS", output_ready=True), NOW).finish \
        is Finish.COMPLETED


def test_a_run_failing_for_good_fails_the_batch_but_a_retry_does_not():
    assert decide(_batch(), _seen(run_status="FAILURE", run_will_retry=True), NOW).batch.status == "in_progress"
    failed = decide(_batch(), _seen(run_status="FAILURE", run_id="r1"), NOW).batch
    assert failed.status == "failed" and "r1" in failed.errors.data[0].message


def test_cancel_stops_its_own_running_run_then_finishes_as_cancelled():
    cancelling = _batch(status="cancelling", cancelling_at=NOW)
    assert decide(cancelling, _seen(run_status="STARTED", run_is_own=True), NOW).stop_run
    assert decide(cancelling, _seen(run_status="FAILURE", run_is_own=True), NOW).finish is Finish.CANCELLED


def test_cancel_never_stops_a_run_another_batch_shares():
    cancelling = _batch(status="cancelling", cancelling_at=NOW)
    decision = decide(cancelling, _seen(run_status="STARTED"), NOW)
    assert not decision.stop_run and decision.finish is Finish.CANCELLED


def test_a_run_another_batch_still_waits_for_is_never_stopped():
    shared = _seen(run_status="STARTED", run_is_own=True, run_needed_by_others=True)
    cancelled = decide(_batch(status="cancelling", cancelling_at=NOW), shared, NOW)
    assert not cancelled.stop_run and cancelled.finish is Finish.CANCELLED
    expired = decide(_batch(status="in_progress"), shared, 6_000)
    assert not expired.stop_run and expired.finish is Finish.EXPIRED


def test_only_unfinished_batches_inside_their_window_want_results():
    assert wants_results(_batch(status="in_progress"), NOW)
    assert not wants_results(_batch(status="cancelling", cancelling_at=NOW), NOW)
    assert not wants_results(_batch(status="in_progress"), 6_000)
    assert not wants_results(_batch(status="cancelled"), NOW)


def test_a_refresh_failure_is_noted_once_and_cleared_by_a_refresh_that_works():
    failing = with_refresh_failure(with_refresh_failure(_batch(status="in_progress"), "first"), "second")
    assert [(error.code, error.message) for error in failing.errors.data] == [("refresh_failed", "second")]
    assert decide(failing, _seen(run_status="STARTED"), NOW).batch.errors is None


def test_expiry_keeps_finished_rows():
    late = 6_000
    assert decide(_batch(status="in_progress"), _seen(run_status="STARTED", run_is_own=True), late).stop_run
    assert decide(_batch(status="in_progress"), _seen(run_status="FAILURE"), late).finish is Finish.EXPIRED


def test_a_run_that_finished_in_time_completes_even_if_seen_late():
    assert decide(_batch(status="in_progress"), _seen(run_status="SUCCESS", output_ready=True), 6_000).finish \
        is Finish.COMPLETED


def test_terminal_batches_never_change():
    done = _batch(status="completed")
    assert decide(done, _seen(run_status="FAILURE"), NOW).batch == done
