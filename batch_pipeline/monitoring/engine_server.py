"""The warm engine host's own metrics (KV-cache use, running and waiting requests, ...), federated.

Only a server the state file calls ready and whose supervisor lives is asked; its `vllm:` families
are passed on unchanged (Python and process series of the server's own process are left out, so
they never clash with the shim's). No server, no series.
"""

import urllib.request

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState

VLLM_PREFIX = "vllm:"
_TIMEOUT_SECONDS = 2.0


def vllm_families(exposition: str) -> list[Metric]:
    """The `vllm:` metric families of a Prometheus text exposition."""
    return [family for family in text_string_to_metric_families(exposition) if family.name.startswith(VLLM_PREFIX)]


def running_server(files: ServerFiles) -> ServerState | None:
    state = files.read()
    return state if state is not None and state.status == "ready" and state.supervisor.process() else None


def scrape(state: ServerState, timeout: float = _TIMEOUT_SECONDS) -> list[Metric] | None:
    """The server's `vllm:` families, or None if it did not answer with a readable exposition."""
    try:
        with urllib.request.urlopen(f"{state.base_url}/metrics", timeout=timeout) as response:
            return vllm_families(response.read().decode())
    except (OSError, ValueError):
        return None
