"""One request that makes the engine fail, at add time or inside a step: that line's 400, the rest answered."""

import pytest

from batch_pipeline.generation.engine.interface import EngineFailure, EngineRequest
from batch_pipeline.generation.engine.isolation import IsolatingEngine, read_suspects
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline_tests.support.fake_engine import ScriptedEngine

# ENGINE_RETRIES in generation.assets: the first attempt and five retries.
ATTEMPTS = 6


def _requests(count: int) -> list[EngineRequest]:
    return [EngineRequest(row, f"id-{row}", {"messages": []}, CHAT_COMPLETIONS_URL) for row in range(count)]


def test_an_error_while_adding_one_request_is_its_400_and_the_engine_goes_on():
    engine = ScriptedEngine(unaddable={3})
    results = list(engine.stream(iter(_requests(10)), 4))
    assert sorted(r.request.row_index for r in results) == list(range(10))
    refused = [r for r in results if r.error]
    assert [(r.request.row_index, r.error.code) for r in refused] == [(3, "invalid_request")]
    assert "OverflowError" in refused[0].error.message and not engine.dead


def test_a_step_failure_names_every_request_in_flight_and_an_engine_gone_is_not_a_400():
    with pytest.raises(EngineFailure) as caught:
        list(ScriptedEngine(poison={5}).stream(iter(_requests(10)), 4))
    assert caught.value.suspects == [4, 5, 6, 7] and "inf, nan" in caught.value.message
    with pytest.raises(EngineFailure):
        list(ScriptedEngine(dead=True).stream(iter(_requests(3)), 4))


def _run_until_done(tmp_path, poison: set[int], rows: int, max_in_flight: int) -> tuple[dict, int]:
    """What generation does across retries: each attempt gets a fresh engine and the rows still missing."""
    answered: dict = {}
    for attempt in range(1, ATTEMPTS + 1):
        remaining = [request for request in _requests(rows) if request.row_index not in answered]
        engine = IsolatingEngine(ScriptedEngine(poison=poison), tmp_path / "suspects.json")
        try:
            for result in engine.stream(iter(remaining), max_in_flight):
                assert result.request.row_index not in answered, "a row was answered twice"
                answered[result.request.row_index] = result
            return answered, attempt
        except EngineFailure:
            continue
    raise AssertionError(f"still failing after {ATTEMPTS} attempts; answered {sorted(answered)}")


def test_a_request_that_fails_the_engine_is_set_aside_within_the_retries_and_the_rest_is_answered(tmp_path):
    answered, attempts = _run_until_done(tmp_path, poison={13}, rows=40, max_in_flight=8)
    assert sorted(answered) == list(range(40)) and attempts <= ATTEMPTS
    poison = answered[13]
    assert poison.error.code == "engine_failure" and "alone" in poison.error.message
    assert "inf, nan" in poison.error.message
    assert all(answered[row].error is None and answered[row].completions for row in answered if row != 13)
    assert read_suspects(tmp_path / "suspects.json").rows[13].alone == 2


def test_an_engine_killed_once_from_outside_costs_one_retry_and_sets_nobody_aside(tmp_path):
    path = tmp_path / "suspects.json"
    with pytest.raises(EngineFailure):
        list(IsolatingEngine(ScriptedEngine(poison={2}), path).stream(iter(_requests(6)), 4))
    assert sorted(read_suspects(path).rows) == [0, 1, 2, 3]
    results = list(IsolatingEngine(ScriptedEngine(), path).stream(iter(_requests(6)), 4))
    assert sorted(r.request.row_index for r in results) == list(range(6)) and not any(r.error for r in results)
