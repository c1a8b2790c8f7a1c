"""Holding an accelerator slot, without vLLM: two processes never hold one slot, the kernel frees a
killed holder's slot (even when a forked engine process outlives it), a run prefers the slot where
its engine is warm, of its own size, and records the slot it took on its Dagster run."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from dagster import instance_for_test, materialize

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import GPU_SLOT_TAG
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.processes import ProcessIdentity
from batch_pipeline.core.registry import ModelEntry
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation import assets
from batch_pipeline.generation.engine.server_state import ServerState
from batch_pipeline.generation.engine.session import EngineUse
from batch_pipeline.generation.engine.slots import SlotError, SlotTimeout, hold_slot, slot_files
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.results import validated_dataset

# Holds a slot, says which, forks a child (as vLLM forks its EngineCore) if asked, then sleeps.
_HOLDER = """
import os, sys, time
from pathlib import Path
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.generation.engine.slots import hold_slot
from batch_pipeline.generation.engine.spec import EngineSpec

root, slots, spec, fork = sys.argv[1:]
with hold_slot(DataLayout(Path(root)), parse_slots(slots), EngineSpec.model_validate_json(spec),
               holder="run holder-run") as held:
    if fork == "fork" and os.fork() == 0:
        time.sleep(300)
        os._exit(0)
    print(held.slot.index, flush=True)
    time.sleep(300)
"""


class _Waited(Exception):
    """Raised by `on_wait`: the caller found every fitting slot held."""


def _refuse_to_wait():
    raise _Waited


def _spec(tmp_path, tensor_parallel_size: int = 1, dtype: str = "bfloat16") -> EngineSpec:
    entry = ModelEntry.model_validate({"engine": {"model": "/m", "dtype": dtype,
                                                  "tensor_parallel_size": tensor_parallel_size}})
    return EngineSpec.resolve("m", entry, tmp_path)


def _holder(tmp_path, slots: str, spec: EngineSpec, fork: bool = False) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), slots, spec.model_dump_json(),
                                "fork" if fork else "no"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    return process, int(process.stdout.readline())


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_two_processes_never_hold_one_slot(tmp_path):
    spec = _spec(tmp_path)
    holder, index = _holder(tmp_path, "0", spec)
    try:
        assert index == 0
        with pytest.raises(_Waited):
            with hold_slot(DataLayout(tmp_path), parse_slots("0"), spec, on_wait=_refuse_to_wait):
                pass
        with hold_slot(DataLayout(tmp_path), parse_slots("0;1"), spec, on_wait=_refuse_to_wait) as held:
            assert held.slot.index == 1  # the other slot is free: no waiting
    finally:
        _kill_group(holder)


def test_a_slot_wait_past_its_deadline_fails_naming_the_holder(tmp_path):
    spec = _spec(tmp_path)
    holder, _ = _holder(tmp_path, "0", spec)
    try:
        with pytest.raises(SlotTimeout, match=rf"slot 0 \(0\) by run holder-run \(pid {holder.pid}\)"):
            with hold_slot(DataLayout(tmp_path), parse_slots("0"), spec, wait_seconds=0):
                pass
    finally:
        _kill_group(holder)


def test_a_killed_holder_frees_its_slot_even_if_a_forked_engine_process_outlives_it(tmp_path):
    spec = _spec(tmp_path)
    holder, _ = _holder(tmp_path, "0", spec, fork=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)  # the run worker alone; its forked child lives on
        holder.wait()
        waits = []
        started = time.monotonic()
        with hold_slot(DataLayout(tmp_path), parse_slots("0"), spec, on_wait=lambda: waits.append(1)) as held:
            assert held.slot.index == 0 and not waits and time.monotonic() - started < 5
    finally:
        _kill_group(holder)


def test_a_waiting_run_gets_the_slot_once_its_holder_is_killed(tmp_path):
    spec = _spec(tmp_path)
    holder, _ = _holder(tmp_path, "0", spec)
    waits = []

    def kill_the_holder():
        waits.append(1)
        os.killpg(holder.pid, signal.SIGKILL)

    try:
        with hold_slot(DataLayout(tmp_path), parse_slots("0"), spec, on_wait=kill_the_holder) as held:
            assert held.slot.index == 0 and waits == [1]
    finally:
        _kill_group(holder)


def _warm(tmp_path, slots: str, index: int, spec: EngineSpec, status: str = "ready") -> None:
    """A server state naming a live supervisor (this process) for `spec` in slot `index`."""
    files = slot_files(DataLayout(tmp_path), parse_slots(slots)[index])
    files.write(ServerState(status=status, supervisor=ProcessIdentity.of(os.getpid()), port=9,
                            fingerprint=spec.fingerprint, started_by_model=spec.model, started_at=0))


def test_a_run_takes_the_slot_where_its_engine_is_warm_then_an_empty_one(tmp_path):
    bf16, fp32 = _spec(tmp_path), _spec(tmp_path, dtype="float32")
    _warm(tmp_path, "0;1;2", 0, fp32)
    _warm(tmp_path, "0;1;2", 2, bf16, status="starting")  # the preload is still loading it there
    layout = DataLayout(tmp_path)
    with hold_slot(layout, parse_slots("0;1;2"), bf16) as held:
        assert held.slot.index == 2
    (tmp_path / "engine" / "slot-2" / "server.json").unlink()
    with hold_slot(layout, parse_slots("0;1;2"), bf16) as held:
        assert held.slot.index == 1  # empty, rather than evicting the warm fp32 engine of slot 0


def test_a_model_gets_a_slot_of_its_own_size_and_fails_clearly_without_one(tmp_path):
    layout = DataLayout(tmp_path)
    with hold_slot(layout, parse_slots("2,3;0"), _spec(tmp_path)) as held:
        assert held.slot.index == 1  # the two-device slot is kept for models split over two devices
    with hold_slot(layout, parse_slots("0;1;2,3"), _spec(tmp_path, tensor_parallel_size=2)) as held:
        assert held.slot.devices == ("2", "3")
    with pytest.raises(SlotError, match="needs 2 devices"):
        with hold_slot(layout, parse_slots("0;1"), _spec(tmp_path, tensor_parallel_size=2)):
            pass


def test_two_holds_in_one_process_take_two_slots_and_leave_both_locked(tmp_path):
    """The kernel does not keep a process from locking a file it holds: the process itself must."""
    layout, spec = DataLayout(tmp_path), _spec(tmp_path)
    with hold_slot(layout, parse_slots("0;1"), spec) as first:
        with hold_slot(layout, parse_slots("0;1"), spec) as second:
            assert (first.slot.index, second.slot.index) == (0, 1)
            with pytest.raises(SlotTimeout, match="slot 0 .* by this process"):
                with hold_slot(layout, parse_slots("0;1"), spec, wait_seconds=0):
                    pass
    with hold_slot(layout, parse_slots("0;1"), spec, on_wait=_refuse_to_wait) as again:
        assert again.slot.index == 0  # released on the way out


def test_a_run_records_the_slot_it_holds_and_skips_a_held_one(monkeypatch, data_root):
    sessions = []

    def session(spec, pipeline, rows_to_generate, held):
        sessions.append(spec.model)
        return contextlib.nullcontext(EngineUse(ScriptedEngine(), "server", True, 0.0))

    monkeypatch.setattr(assets, "engine_session", session)
    pipeline = PipelineConfig(data_dir=str(data_root), gpu_slots="0;1")
    spec = EngineSpec.resolve(MODEL, pipeline.registry().entry(MODEL), data_root)
    holder, _ = _holder(data_root, "0", spec)  # slot 0 is held by another run
    try:
        with instance_for_test() as instance:
            instance.add_dynamic_partitions(MODELS.name, [MODEL])
            validated_dataset(instance, pipeline, "slots-0123456789", 5)
            result = materialize([assets.batch_responses], instance=instance, resources={"pipeline": pipeline},
                                 partition_key=dataset_model_key("slots-0123456789", MODEL))
            assert result.success and sessions == [MODEL]
            assert instance.get_run_by_id(result.run_id).tags[GPU_SLOT_TAG] == "1"
    finally:
        _kill_group(holder)
