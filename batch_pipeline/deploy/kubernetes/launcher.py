"""dagster-k8s's K8sRunLauncher, plus the GPU request every GPU run needs on Kubernetes.

Whatever started a `batch_responses` run (a sensor, `run_models`, a backfill, the UI), it reaches the
cluster through this launcher, so this is the one place that cannot miss a run: the queue sensor
only re-tags runs on its next tick, and a run dequeued before that would start without a GPU. The
tag is written to the run itself, so the UI shows what the pod was given and retries inherit it.

Configured in the Helm values (`runLauncher.type: CustomRunLauncher`); its config is exactly
K8sRunLauncher's. The GPU count is `BATCH_PIPELINE_K8S_GPU_REQUEST` in the daemon's environment.
"""

from dagster._core.launcher import LaunchRunContext  # not exported by dagster
from dagster_k8s import K8sRunLauncher

from batch_pipeline.core.runs import is_gpu_run
from batch_pipeline.core.settings import Settings
from batch_pipeline.deploy.kubernetes.gpu_tag import gpu_run_tags


class GpuK8sRunLauncher(K8sRunLauncher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gpus_per_run = Settings().k8s_gpu_request

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if is_gpu_run(run) and (tags := gpu_run_tags(run.tags, self.gpus_per_run)):
            self._instance.add_run_tags(run.run_id, tags)
            context = context._replace(dagster_run=self._instance.get_run_by_id(run.run_id))
        super().launch_run(context)
