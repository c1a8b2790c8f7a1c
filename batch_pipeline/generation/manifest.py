"""A cell's manifest: which engine its answers came from (`manifest.json` beside its outputs), so a
rerun can tell whether it would reproduce them.

It is recorded before a run generates anything, so chunks on disk always have the manifest of the
engine that wrote them. A run whose engine differs from the recorded one (any field of the engine
identity) refuses under `--exact` (the run tag core.names.EXACT_TAG), naming each change, before it
generates anything or reuses a chunk; otherwise it warns, records its own manifest, and lists the
earlier engines whose chunks the cell still holds in `earlier_engines`: a resumed cell mixes answers
of several engines only in plain sight.
"""

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field, model_validator

from batch_pipeline.core.names import EXACT_TAG
from batch_pipeline.core.registry import ModelEntry
from batch_pipeline.core.storage import write_json_atomic
from batch_pipeline.generation.engine.identity import EngineIdentity

# Chunks on disk from before manifests were recorded: the engine that wrote them is unknown.
UNRECORDED = "unrecorded"
_MISSING = "(none)"


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names the file and field."""


class CellManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    dataset: str
    model: str  # the registry name the batch asked for (a model or an adapter)
    identity: EngineIdentity
    registry_entry: ModelEntry  # as the registry held it (prices and placement do not change answers)
    recorded_at: datetime
    # Fingerprints of other engines whose chunks are still in the cell (a resume without --exact).
    earlier_engines: list[str] = []

    @computed_field
    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @model_validator(mode="before")
    @classmethod
    def _derived_fields_are_not_input(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if key != "fingerprint"}
        return data


def read_manifest(path: Path) -> CellManifest | None:
    if not path.exists():
        return None
    try:
        return CellManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"field {'.'.join(map(str, error['loc'])) or '(top level)'!r}: {error['msg']}"
                             for error in exc.errors())
        raise ManifestError(f"manifest {path}: {problems}") from None


def write_manifest(path: Path, manifest: CellManifest) -> None:
    write_json_atomic(path, manifest.model_dump(mode="json"))


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {key: leaf for name, inner in value.items() for key, leaf in _flat(inner, f"{prefix}.{name}").items()}
    return {prefix: value}


def identity_changes(old: EngineIdentity, new: EngineIdentity) -> list[str]:
    """Each field that differs, as `field: old -> new` (nested fields dotted)."""
    before, after = (_flat(identity.model_dump(mode="json"), "")
                     for identity in (old, new))
    return [f"{key.lstrip('.')}: {before.get(key, _MISSING)} -> {after.get(key, _MISSING)}"
            for key in sorted(before.keys() | after.keys()) if before.get(key, _MISSING) != after.get(key, _MISSING)]


class ManifestCheck(BaseModel):
    """What a run does with the cell's recorded manifest: `problem` says why it is not this run's engine
    (None when it is); `record` is the manifest to write before generating."""

    problem: str | None
    record: CellManifest


def exact_requested(tags: dict[str, str]) -> bool:
    return tags.get(EXACT_TAG, "").lower() == "true"


def check_manifest(recorded: CellManifest | None, current: CellManifest, chunks_on_disk: int) -> ManifestCheck:
    if chunks_on_disk == 0:
        # Nothing generated is kept: whatever was recorded, the cell's answers will all be this engine's.
        changes = identity_changes(recorded.identity, current.identity) if recorded else []
        problem = f"the engine changed since {recorded.recorded_at:%Y-%m-%d %H:%M} UTC: {'; '.join(changes)}" \
            if changes else None
        return ManifestCheck(problem=problem, record=current)
    if recorded is None:
        return ManifestCheck(
            problem=f"{chunks_on_disk} chunk(s) on disk have no manifest: the engine that wrote them is unknown",
            record=current.model_copy(update={"earlier_engines": [UNRECORDED]}))
    changes = identity_changes(recorded.identity, current.identity)
    earlier = list(recorded.earlier_engines)
    if not changes:
        return ManifestCheck(problem=None, record=current.model_copy(update={"earlier_engines": earlier}))
    problem = (f"the engine changed since {recorded.recorded_at:%Y-%m-%d %H:%M} UTC, and {chunks_on_disk} chunk(s) "
               f"on disk came from the recorded one: {'; '.join(changes)}")
    earlier = [fingerprint for fingerprint in dict.fromkeys([*earlier, recorded.fingerprint])
               if fingerprint != current.fingerprint]
    return ManifestCheck(problem=problem, record=current.model_copy(update={"earlier_engines": earlier}))
