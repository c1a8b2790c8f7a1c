"""The README stays short and true: its registry examples and the docs' validate against the registry's
schema, and every link to a page or anchor of ours resolves."""

import re
from pathlib import Path

import pytest

from batch_pipeline.core.registry import parse_registry
from batch_pipeline_tests.support.models import PROJECT_ROOT

DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
README = PROJECT_ROOT / "README.md"
_YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _registry_blocks(page: Path) -> list[str]:
    """Registry examples: whole files (`models:`) or entries to put under it (indented)."""
    blocks = []
    for block in _YAML_BLOCK.findall(page.read_text()):
        if block.startswith("models:"):
            blocks.append(block)
        elif block.startswith("  ") and ("engine:" in block):
            blocks.append("models:\n" + block)
    return blocks


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_reads_in_five_minutes():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: page.name)
def test_registry_examples_validate(page):
    for block in _registry_blocks(page):
        registry = parse_registry(block, f"{page.name} example")
        assert registry.models


def test_the_gpu_examples_are_there():
    [example] = [block for block in _registry_blocks(PROJECT_ROOT / "docs" / "models.md") if "AWQ" in block]
    registry = parse_registry(example, "models.md")
    assert registry.models["Qwen2.5-7B-Instruct"].engine.max_model_len == 8192
    assert registry.models["Qwen2.5-7B-Instruct-AWQ"].engine.quantization == "awq"
    assert registry.models["bge-base-en-v1.5"].task == "embed"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: page.name)
def test_links_to_our_pages_resolve(page):
    for target in _LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = {_slug(line.lstrip("#")) for line in linked.read_text().splitlines() if line.startswith("#")}
            assert anchor in headings, f"{page.name} links to {target}: no such heading"
