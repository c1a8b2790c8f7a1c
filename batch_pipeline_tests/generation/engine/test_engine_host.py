"""The engine host and its client over real HTTP, with a scripted engine in place of vLLM."""

import contextlib
import threading
import time

import pytest
import uvicorn

from batch_pipeline.core.loopback import free_port
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.registry import EngineArgs, ModelEntry, SamplingDefaults
from batch_pipeline.generation.engine.host import create_host
from batch_pipeline.generation.engine.interface import Finished
from batch_pipeline.generation.engine.server import serves
from batch_pipeline.generation.engine.server_client import ServedEngine
from batch_pipeline.generation.engine.server_state import EngineServerError, ServerState, served_name
from batch_pipeline.generation.engine.spec import EngineSpec, LoraAdapter
from batch_pipeline.protocol.answers import Completion, EngineRequest
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline_tests.support.fake_engine import ScriptedEngine


class _PacedEngine(ScriptedEngine):
    """The engine as the host drives it (`use` of a spec): finishes one request per step, oldest first,
    `step_seconds` apart; refuses a seed past uint64 as vLLM's msgspec serializer does; can die at a given row."""

    def __init__(self, step_seconds: float = 0.0, die_at: int | None = None, text: str = "answer {}",
                 steps_per_answer: int = 1):
        super().__init__()
        self.text = text
        self.steps_per_answer = steps_per_answer
        self._steps = 0
        self.sampling = SamplingDefaults()
        self.spec = _spec()
        self.adapter = None
        self.sampling_seen: list[SamplingDefaults] = []
        self.step_seconds = step_seconds
        self.die_at = die_at

    def use(self, spec: EngineSpec) -> None:
        self.spec, self.sampling, self.adapter = spec, spec.sampling, spec.adapter

    def _submit(self, request):
        if request.body.get("seed", 0) > 2**64 - 1:
            raise OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")
        ticket = super()._submit(request)
        self.sampling_seen.append(self.sampling)
        return ticket

    def _finished(self):
        time.sleep(self.step_seconds)
        self._steps += 1
        if self._steps % self.steps_per_answer:
            return []
        request = self._window.pop(0)
        if request.row_index == self.die_at:
            raise RuntimeError("EngineCore died")
        return [Finished(ticket=request.row_index, prompt_tokens=7,
                         completions=[Completion(text=self.text.format(request.custom_id), finish_reason="length",
                                                 tokens=2)])]


def _spec(sampling: SamplingDefaults = SamplingDefaults(), adapter: LoraAdapter | None = None) -> EngineSpec:
    return EngineSpec(model="m", entry=ModelEntry(engine=EngineArgs(model="m"), sampling=sampling), engine_kwargs={},
                      adapter=adapter)


SECRET = "s3cret"


class _Served(ServedEngine):
    """The client as a run builds it, with the test host's secret."""

    def __init__(self, state: ServerState, spec: EngineSpec):
        super().__init__(state, spec, SECRET)


@contextlib.contextmanager
def _hosted(engine: _PacedEngine, failures: list):
    port = free_port()
    app = create_host(engine, served_name("abc"), SECRET, on_engine_failure=lambda: failures.append(True),
                      busy_wait_seconds=0.5)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield ServerState(status="ready", supervisor=ProcessIdentity(pid=0, started_at=0), port=port,
                          fingerprint="abc", started_by_model="m", started_at=0)
    finally:
        server.should_exit = True
        thread.join(10)


def _requests(count: int, tools_at: int | None = None) -> list[EngineRequest]:
    return [EngineRequest(row, f"id-{row}", {"messages": [], **({"tools": [{}]} if row == tools_at else {})},
                          CHAT_COMPLETIONS_URL)
            for row in range(count)]


def test_a_whole_job_comes_back_once_per_row_with_refusals_and_the_jobs_sampling():
    engine = _PacedEngine()
    sampling = SamplingDefaults(temperature=0.3, max_tokens=9)
    with _hosted(engine, []) as state:
        assert serves(state, SECRET)
        adapter = LoraAdapter(name="terse", path="/adapters/terse")
        results = list(_Served(state, _spec(sampling, adapter)).stream(iter(_requests(300, tools_at=5)), 64))
    assert sorted(result.request.row_index for result in results) == list(range(300))
    refused = [result for result in results if result.error]
    assert [(r.request.custom_id, r.error.param, r.error.code) for r in refused] == [
        ("id-5", "tools", "unsupported_parameter")]
    answered = next(result for result in results if result.request.row_index == 0)
    assert (answered.prompt_tokens, answered.completions) == (7, [Completion("answer id-0", "length", 2)])
    assert answered.latency_s is not None
    assert all(seen == sampling for seen in engine.sampling_seen) and len(engine.sampling_seen) == 299
    assert engine.adapter == adapter  # a model's adapters share its host: the adapter travels per job


def test_a_caller_that_stops_reading_aborts_the_rest_and_frees_the_engine():
    engine = _PacedEngine(step_seconds=0.01)
    with _hosted(engine, []) as state:
        results = _Served(state, _spec()).stream(iter(_requests(500)), 64)
        first = [next(results) for _ in range(3)]
        results.close()
        deadline = time.monotonic() + 10
        while not engine.aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.aborted and 3 not in {r.request.row_index for r in first}
        # The next run gets the engine (the host no longer counts the old job as running).
        deadline = time.monotonic() + 10
        while True:
            try:
                again = list(_Served(state, _spec()).stream(iter(_requests(20)), 8))
                break
            except EngineServerError:
                assert time.monotonic() < deadline, "the host stayed busy after its caller left"
                time.sleep(0.1)
    assert len(again) == 20


def test_a_second_job_while_one_runs_is_refused_not_interleaved():
    engine = _PacedEngine(step_seconds=0.01)
    with _hosted(engine, []) as state:
        running = _Served(state, _spec()).stream(iter(_requests(200)), 16)
        next(running)
        with pytest.raises(EngineServerError, match="409"):
            list(_Served(state, _spec()).stream(iter(_requests(5)), 4))
        running.close()


def test_an_engine_failure_fails_the_run_and_retires_the_host():
    engine = _PacedEngine(die_at=40)
    failures: list = []
    with _hosted(engine, failures) as state:
        with pytest.raises(EngineServerError, match="EngineCore died") as caught:
            list(_Served(state, _spec()).stream(iter(_requests(100)), 16))
    assert failures == [True]
    assert 40 in caught.value.suspects and len(caught.value.suspects) <= 16  # what was in flight, for isolation


def test_a_request_the_engine_cannot_take_is_its_400_and_the_host_stays_up():
    engine = _PacedEngine()
    failures: list = []
    requests = _requests(30)
    requests[7].body["seed"] = 2**70
    with _hosted(engine, failures) as state:
        results = list(_Served(state, _spec()).stream(iter(requests), 8))
        again = list(_Served(state, _spec()).stream(iter(_requests(5)), 4))
    assert sorted(r.request.row_index for r in results) == list(range(30)) and len(again) == 5
    refused = [r for r in results if r.error]
    assert [(r.request.row_index, r.error.code) for r in refused] == [(7, "invalid_request")]
    assert "OverflowError" in refused[0].error.message
    assert failures == []  # not taken for an engine failure: the warm host is kept


def test_a_host_that_is_gone_fails_the_run_with_its_address():
    state = ServerState(status="ready", supervisor=ProcessIdentity(pid=0, started_at=0), port=free_port(),
                        fingerprint="abc", started_by_model="m", started_at=0)
    with pytest.raises(EngineServerError, match="stopped answering"):
        list(_Served(state, _spec()).stream(iter(_requests(3)), 4))


def test_answers_with_unicode_line_separators_arrive_whole():
    engine = _PacedEngine(text="line\u2028separated\u0085next\u2029{}")
    with _hosted(engine, []) as state:
        results = list(_Served(state, _spec()).stream(iter(_requests(10)), 4))
    assert sorted(r.completions[0].text for r in results) == sorted(
        f"line\u2028separated\u0085next\u2029id-{row}" for row in range(10))


def test_a_job_whose_caller_left_stops_within_an_engine_step():
    """A request takes 100 steps (5 s) to finish: the abort must not wait for the next one."""
    engine = _PacedEngine(step_seconds=0.05, steps_per_answer=100)
    with _hosted(engine, []) as state:
        results = _Served(state, _spec()).stream(iter(_requests(400)), 64)
        next(results)
        results.close()
        started = time.monotonic()
        deadline = started + 3
        while not engine.aborted:
            assert time.monotonic() < deadline, "the job went on after its caller left"
            time.sleep(0.05)
