"""The Kubernetes recipe (batch_pipeline/deploy/kubernetes), checked offline: no cluster, no helm.

The run launcher is built from the Helm values exactly as Dagster builds it from dagster.yaml, a GPU
run is launched through it against a recording Kubernetes API, and the Job dagster-k8s produced is
validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail).
"""

import json
import sys
from pathlib import Path
from unittest.mock import MagicMock

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster import DagsterRun, instance_for_test
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.client import DagsterKubernetesClient
from dagster_k8s.job import get_user_defined_k8s_config
from sqlalchemy.engine import make_url

import batch_pipeline.deploy.kubernetes as recipe
from batch_pipeline.api.binding import listen_refusal
from batch_pipeline.api.origin import host_allowed
from batch_pipeline.api.store_engine import store_url
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import INGEST_JOB, K8S_CONFIG_TAG, PARTITION_TAG, RESPONSES_JOB
from batch_pipeline.core.settings import Settings
from batch_pipeline.deploy.kubernetes.gpu_tag import GPU_RESOURCE, gpu_run_tags
from batch_pipeline.tools.prepare_instance import instance_config

RECIPE = Path(recipe.__file__).parent
IMAGE = "registry.example.com/batch-pipeline:0.1.0"
# The oldest minor still common on managed clusters, and the one the pinned client (kubernetes 36) speaks.
KUBERNETES_VERSIONS = ("1.30", "1.36")
# Top-level keys of the dagster/dagster chart's values (its values.schema.json, chart 1.13); a typo
# here would be silently ignored by helm.
CHART_KEYS = {
    "global", "nameOverride", "fullnameOverride", "rbacEnabled", "imagePullSecrets", "dagsterWebserver",
    "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret",
    "rabbitmq", "redis", "flower", "ingress", "computeLogManager", "scheduler", "runLauncher", "pythonLogs",
    "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount", "retention",
    "additionalInstanceConfig", "concurrency",
}


def _yaml(name: str) -> dict:
    return yaml.safe_load((RECIPE / name).read_text())


def _values() -> dict:
    return _yaml("values.yaml")


def _launcher_config() -> dict:
    return _values()["runLauncher"]["config"]["customRunLauncher"]


def _valid(resource: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


def _env(container: dict) -> dict[str, str]:
    return {entry["name"]: entry.get("value") for entry in container.get("env") or []}


@pytest.fixture
def cluster(monkeypatch):
    """(instance, launcher, batch API): the launcher from the Helm values, recording what it creates."""
    monkeypatch.setenv("BATCH_PIPELINE_K8S_GPU_REQUEST", "1")
    # In-cluster credentials do not exist here; nothing below talks to a cluster.
    monkeypatch.setattr("dagster_k8s.launcher.load_kubernetes_config", lambda **_: None)
    block = _launcher_config()
    with instance_for_test() as instance:
        data = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block["config"]))
        launcher = data.rehydrate(as_type=RunLauncher)  # validates the config against dagster-k8s's schema
        batch_api = MagicMock()
        launcher._api_client = DagsterKubernetesClient.production_client(
            batch_api_override=batch_api, core_api_override=MagicMock())
        launcher.register_instance(instance)
        yield instance, launcher, batch_api


def _launch(instance, launcher, batch_api, job_name: str, tags: dict[str, str]) -> tuple[DagsterRun, dict]:
    """Launches a run as the queued-run daemon would; returns it as stored and the Job as sent."""
    origin = JobPythonOrigin(job_name, RepositoryPythonOrigin(
        executable_path=sys.executable, code_pointer=ModuleCodePointer("batch_pipeline.definitions", "defs"),
        container_image=IMAGE))
    run = instance.add_run(DagsterRun(job_name=job_name, tags=tags, job_code_origin=origin))
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    body = batch_api.create_namespaced_job.call_args.kwargs["body"]
    return instance.get_run_by_id(run.run_id), kubernetes.client.ApiClient().sanitize_for_serialization(body)


def test_gpu_run_job_requests_the_gpu_and_mounts_the_shared_data_folder(cluster):
    instance, launcher, batch_api = cluster
    assert isinstance(launcher, K8sRunLauncher)
    run, job = _launch(instance, launcher, batch_api, RESPONSES_JOB,
                       {PARTITION_TAG: "demo-1a2b3c4d5e|SmolLM2-135M-Instruct"})
    _valid(job)

    assert json.loads(run.tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"] == {GPU_RESOURCE: 1}
    assert batch_api.create_namespaced_job.call_args.kwargs["namespace"] == "batch-pipeline"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    # The client's model holds quantities as strings: what the API server receives.
    assert container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    claim = _yaml("data-volume.yaml")
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (data_volume,) = [v for v in volumes.values() if "persistentVolumeClaim" in v]
    assert data_volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    env = _env(container)
    assert mounts[data_volume["name"]] == env["BATCH_PIPELINE_DATA"] == "/data"
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert env["BATCH_PIPELINE_ENGINE_MODE"] == "in_process"
    # The Dagster instance reaches the pod as dagster-k8s wires it: ConfigMap at DAGSTER_HOME, Postgres secret.
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert any(entry["name"] == "DAGSTER_PG_PASSWORD" for entry in container["env"])


def test_non_gpu_runs_and_a_cluster_without_gpus_get_no_gpu(cluster, monkeypatch):
    instance, launcher, batch_api = cluster
    run, job = _launch(instance, launcher, batch_api, INGEST_JOB, {PARTITION_TAG: "demo-1a2b3c4d5e"})
    _valid(job)
    assert K8S_CONFIG_TAG not in run.tags
    assert GPU_RESOURCE not in ((job["spec"]["template"]["spec"]["containers"][0].get("resources") or {})
                                .get("limits") or {})

    launcher.gpus_per_run = 0
    run, job = _launch(instance, launcher, batch_api, RESPONSES_JOB, {PARTITION_TAG: "d-1a2b3c4d5e|m"})
    _valid(job)
    assert K8S_CONFIG_TAG not in run.tags


def test_a_users_own_k8s_tag_is_kept_and_the_gpu_merged_under_it(cluster):
    instance, launcher, batch_api = cluster
    theirs = {"pod_spec_config": {"node_selector": {"gpu-type": "a100"}},
              "container_config": {"resources": {"limits": {"memory": "64Gi"}}}}
    run, job = _launch(instance, launcher, batch_api, RESPONSES_JOB,
                       {PARTITION_TAG: "d-1a2b3c4d5e|m", K8S_CONFIG_TAG: json.dumps(theirs)})
    _valid(job)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu-type": "a100"}
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "64Gi", GPU_RESOURCE: "1"}


def test_gpu_tag_is_what_dagster_k8s_accepts_and_idempotent():
    tags = gpu_run_tags({}, 2)
    config = get_user_defined_k8s_config(tags)  # raises on anything outside dagster-k8s's tag schema
    assert config.container_config == {"resources": {"limits": {GPU_RESOURCE: 2}}}
    assert gpu_run_tags(tags, 2) == {}
    assert gpu_run_tags({}, 0) == {}
    # A GPU count the user typed wins over the setting.
    users = {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": {"limits": {GPU_RESOURCE: 4}}}})}
    merged = json.loads(gpu_run_tags(users, 1)[K8S_CONFIG_TAG])
    assert merged["container_config"]["resources"]["limits"][GPU_RESOURCE] == 4


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("BATCH_PIPELINE_K8S_GPU_REQUEST", raising=False)
    assert Settings().k8s_gpu_request == 0


def test_helm_values_match_the_chart_and_each_other():
    values = _values()
    assert set(values) <= CHART_KEYS, set(values) - CHART_KEYS
    block = _launcher_config()
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    assert set(block) == {"module", "class", "config"}
    config = block["config"]
    # The literal names the custom launcher needs are the ones the chart creates.
    assert config["service_account_name"] == values["global"]["serviceAccountName"]
    assert config["instance_config_map"] == f"{values['fullnameOverride']}-instance"
    assert config["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    assert config["dagster_home"] == values["global"]["dagsterHome"]
    assert config["job_namespace"] == _yaml("data-volume.yaml")["metadata"]["namespace"]

    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["-m", "batch_pipeline.definitions"]
    images = {f"{part['image']['repository']}:{part['image']['tag']}"
              for part in (code, values["dagsterWebserver"], values["dagsterDaemon"])}
    assert images == {IMAGE}
    # The code server (sensors) sees the data folder where the run pods do.
    assert code["volumes"][0] in config["volumes"]
    assert code["volumeMounts"][0] in config["volume_mounts"]
    assert f"BATCH_PIPELINE_DATA={_env(code)['BATCH_PIPELINE_DATA']}" in config["env_vars"]

    daemon = values["dagsterDaemon"]
    assert int(_env(daemon)["BATCH_PIPELINE_K8S_GPU_REQUEST"]) >= 1
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator" and daemon["runCoordinator"]["enabled"]
    assert daemon["runRetries"]["retryOnAssetOrOpFailure"] is False
    assert values["concurrency"]["enabled"] and values["concurrency"]["pools"]["granularity"] == "run"
    assert values["postgresql"]["enabled"] and values["generatePostgresqlPasswordSecret"]
    local = instance_config(None)["retention"]  # ticks are purged as on one machine
    assert values["retention"]["enabled"]
    assert values["retention"]["schedule"]["purgeAfterDays"] == local["schedule"]["purge_after_days"]
    assert values["retention"]["sensor"]["purgeAfterDays"] == local["sensor"]["purge_after_days"]


def test_data_volume_claim_is_read_write_many():
    claim = _yaml("data-volume.yaml")
    _valid(claim)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_raycluster_sketch_mounts_the_same_data_folder():
    """Documentation only (KubeRay's CRD has no schema here): parsed, and the shared folder checked."""
    cluster = _yaml("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["spec"]["workerGroupSpecs"]]
    claim = _yaml("data-volume.yaml")["metadata"]["name"]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
            assert _env(container)["BATCH_PIPELINE_DATA"] == "/data"
    assert any(c["resources"]["limits"].get(GPU_RESOURCE) for pod in pods[1:] for c in pod["containers"])


def _api_manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((RECIPE / "api.yaml").read_text()) if doc}


def _secret_ref(container: dict, name: str) -> tuple[str, str]:
    (entry,) = [e for e in container["env"] if e["name"] == name]
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_api_replicas_share_their_store_in_postgres_not_sqlite_on_the_volume(monkeypatch):
    manifests = _api_manifests()
    assert set(manifests) == {"Secret", "Deployment", "Service"}
    for manifest in manifests.values():
        _valid(manifest)
    values, claim = _values(), _yaml("data-volume.yaml")
    secret, deployment, service = manifests["Secret"], manifests["Deployment"], manifests["Service"]
    assert {m["metadata"]["namespace"] for m in manifests.values()} == {claim["metadata"]["namespace"]}
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["command"] == ["python", "-m", "batch_pipeline.api"] and api["image"] == IMAGE

    # The store's URL comes from the one Secret, in the API replicas and in the code server's sensors.
    store_ref = (secret["metadata"]["name"], "url")
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert _secret_ref(api, "BATCH_PIPELINE_POSTGRES_URL") == _secret_ref(code, "BATCH_PIPELINE_POSTGRES_URL") \
        == store_ref
    url = make_url(secret["stringData"]["url"])
    database = values["postgresql"]
    assert url.get_backend_name() == "postgresql" and url.host == f"{values['fullnameOverride']}-postgresql"
    assert (url.username, url.password, url.database, url.port) == (
        database["postgresqlUsername"], database["postgresqlPassword"], database["postgresqlDatabase"],
        database["service"]["port"])

    # The data folder is the claim the runs use; the Dagster instance is the chart's.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in api["volumeMounts"]}
    env = _env(api)
    data = [name for name, v in volumes.items() if "persistentVolumeClaim" in v]
    assert [volumes[name]["persistentVolumeClaim"]["claimName"] for name in data] == [claim["metadata"]["name"]]
    assert mounts[data[0]]["mountPath"] == env["BATCH_PIPELINE_DATA"]
    instance = [name for name, v in volumes.items() if "configMap" in v]
    assert [volumes[name]["configMap"]["name"] for name in instance] == [f"{values['fullnameOverride']}-instance"]
    assert mounts[instance[0]]["mountPath"] == f"{env['DAGSTER_HOME']}/dagster.yaml" \
        and env["DAGSTER_HOME"] == values["global"]["dagsterHome"]
    assert _secret_ref(api, "DAGSTER_PG_PASSWORD") == (values["global"]["postgresqlSecretName"], "postgresql-password")

    # The settings the replicas start with pass their own checks: a key guards the non-loopback
    # address, the Service's names and the probes' Host are answered.
    for name, value in env.items():  # as the container's environment holds them, secrets resolved
        monkeypatch.setenv(name, value if value is not None else "from-a-secret")
    monkeypatch.setenv("BATCH_PIPELINE_POSTGRES_URL", secret["stringData"]["url"])
    settings = Settings()
    assert store_url(DataLayout(settings.data_dir), settings.postgres_url) == secret["stringData"]["url"]
    assert listen_refusal(settings.model_copy(update={"shim_api_key": None})) is not None
    assert listen_refusal(settings) is None and _secret_ref(api, "BATCH_PIPELINE_SHIM_API_KEY")
    assert settings.shim_port == api["ports"][0]["containerPort"]
    service_name = service["metadata"]["name"]
    for name in (service_name, f"{service_name}.{service['metadata']['namespace']}.svc"):
        assert host_allowed(name, settings.allowed_hosts)
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        (host,) = probe["httpGet"]["httpHeaders"]
        assert probe["httpGet"]["path"] == "/health" and host_allowed(host["value"], settings.allowed_hosts)
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == api["ports"][0]["name"]
