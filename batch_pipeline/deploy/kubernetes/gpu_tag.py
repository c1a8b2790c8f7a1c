"""The `dagster-k8s/config` run tag that gives a GPU run's Kubernetes pod its GPUs.

dagster-k8s builds each run's Job from this tag, so asking for `nvidia.com/gpu` here is all a GPU run
needs; the cluster's scheduler then places the pod on a node with that many free devices. Plain
dicts and JSON only (no dagster-k8s import), so the tag can be computed and tested anywhere.
"""

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from batch_pipeline.core.names import K8S_CONFIG_TAG

GPU_RESOURCE = "nvidia.com/gpu"
# GPU node pools are commonly tainted so that only pods asking for GPUs land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


class UserDefinedK8sConfig(BaseModel):
    """The part of dagster-k8s's tag schema we write (its keys are snake_case, its values raw k8s)."""

    container_config: dict[str, Any] = Field(default_factory=dict)
    pod_spec_config: dict[str, Any] = Field(default_factory=dict)


def gpu_k8s_config(gpus: int) -> UserDefinedK8sConfig:
    """Extended resources such as GPUs are requested by their limit (Kubernetes sets the request equal)."""
    return UserDefinedK8sConfig(container_config={"resources": {"limits": {GPU_RESOURCE: gpus}}},
                                pod_spec_config={"tolerations": [GPU_TOLERATION]})


def _merged(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """`theirs` laid over `ours`, mappings merged key by key; any other value of theirs wins whole."""
    merged = dict(ours)
    for key, value in theirs.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, Mapping)
                       and isinstance(merged.get(key), Mapping) else value)
    return merged


def gpu_run_tags(tags: Mapping[str, str], gpus: int) -> dict[str, str]:
    """The tag to set on a GPU run so its pod gets `gpus` GPUs; empty when nothing is to change.

    A `dagster-k8s/config` the user already put on the run (launchpad tags) is kept and the GPU
    request merged under it, so their node selector or memory limit survives and their own GPU
    count, if they gave one, wins.
    """
    if gpus <= 0:
        return {}
    ours = gpu_k8s_config(gpus).model_dump()
    theirs = json.loads(tags[K8S_CONFIG_TAG]) if K8S_CONFIG_TAG in tags else {}
    value = json.dumps(_merged(ours, theirs), sort_keys=True)
    return {} if tags.get(K8S_CONFIG_TAG) == value else {K8S_CONFIG_TAG: value}
