"""Asking a GPU run to stop at its next chunk boundary, through a file beside its chunks.

The file names the one run it is for: a request meant for an earlier run (or a retry's
predecessor) never stops a later run of the same partition.
"""

from pathlib import Path

from batch_pipeline.core.storage import write_text_atomic


def request_stop(path: Path, run_id: str) -> None:
    """Idempotent: the shim repeats its request on every refresh until the run has stopped."""
    if not stop_requested(path, run_id):
        write_text_atomic(path, run_id)


def stop_requested(path: Path, run_id: str) -> bool:
    """Whether the stop file at `path` names `run_id`; one naming another run is ignored."""
    try:
        return path.read_text(encoding="utf-8").strip() == run_id
    except FileNotFoundError:
        return False
