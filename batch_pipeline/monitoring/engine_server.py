"""Every slot's warm engine host: its own metrics (KV-cache use, running and waiting requests, ...), federated.

Only a server the state file calls ready and whose supervisor lives is asked; its `vllm:` families
are passed on with a `gpu_slot` label (Python and process series of the server's own process are left
out, so they never clash with the shim's). Hosts on several slots expose the same family names, so
their samples are merged into one family per name: an exposition must not repeat a family. No
server, no series.
"""

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from batch_pipeline.core import loopback
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.slots import GpuSlot
from batch_pipeline.generation.engine.host_auth import auth_headers
from batch_pipeline.generation.engine.server_state import ServerFiles, ServerState
from batch_pipeline.generation.engine.slots import slot_files

VLLM_PREFIX = "vllm:"
SLOT_LABEL = "gpu_slot"
_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class EngineHost:
    slot: GpuSlot
    state: ServerState
    vllm: list[Metric] | None  # None: it did not answer with a readable exposition

    @property
    def answered(self) -> bool:
        return self.vllm is not None

    @property
    def slot_label(self) -> str:
        return str(self.slot.index)


def vllm_families(exposition: str) -> list[Metric]:
    """The `vllm:` metric families of a Prometheus text exposition."""
    return [family for family in text_string_to_metric_families(exposition) if family.name.startswith(VLLM_PREFIX)]


def running_server(files: ServerFiles) -> ServerState | None:
    state = files.read()
    return state if state is not None and state.status == "ready" and state.supervisor.process() else None


def scrape(state: ServerState, secret: str | None, timeout: float = _TIMEOUT_SECONDS) -> list[Metric] | None:
    """The server's `vllm:` families, or None if it did not answer with a readable exposition (a host
    refuses a caller without its secret)."""
    request = urllib.request.Request(f"{state.base_url}/metrics", headers=auth_headers(secret) if secret else {})
    try:
        with loopback.urlopen(request, timeout=timeout) as response:
            return vllm_families(response.read().decode())
    except (OSError, ValueError):
        return None


def running_hosts(layout: DataLayout, slots: tuple[GpuSlot, ...]) -> list[EngineHost]:
    """Each slot's running host, asked all at once so that hosts that do not answer cost one timeout
    per scrape, not one each."""
    running = [(slot, state, files.secret()) for slot in slots
               if (state := running_server(files := slot_files(layout, slot))) is not None]
    if not running:
        return []
    with ThreadPoolExecutor(max_workers=len(running)) as pool:
        answers = list(pool.map(scrape, [state for _, state, _ in running], [secret for _, _, secret in running]))
    return [EngineHost(slot, state, vllm) for (slot, state, _), vllm in zip(running, answers)]


def merged_vllm_families(hosts: list[EngineHost]) -> list[Metric]:
    """One family per `vllm:` name holding every host's samples, each labelled with its host's slot
    (the first host's help text and type stand for all: they run the same vLLM)."""
    merged: dict[str, Metric] = {}
    for host in hosts:
        for family in host.vllm or ():
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                           family.unit))
            target.samples.extend(_with_slot(sample, host.slot_label) for sample in family.samples)
    return list(merged.values())


def _with_slot(sample: Sample, slot_label: str) -> Sample:
    return sample._replace(labels={**sample.labels, SLOT_LABEL: slot_label})
