"""What operators and tools read: health, the models, the GPU queue and the Prometheus metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from batch_pipeline.api.dependencies import Forecasts, Service
from batch_pipeline.api.errors import ShimError
from batch_pipeline.api.instance_probe import InstanceProbe
from batch_pipeline.api.models import Health, HealthStatus, ModelList, ModelObject, QueueView
from batch_pipeline.api.refresher import Refresher
from batch_pipeline.api.service import ShimService
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.queue.view import queue_cells

router = APIRouter()


def _health(service: ShimService, refresher: Refresher, probe: InstanceProbe) -> Health:
    failures = service.refresh_failures()
    webhook_failures = service.webhooks.failures() if service.webhooks else []
    refresh, stalled = refresher.health(), refresher.stall_detail()
    if (problem := probe.problem()) is not None:
        return Health(status="degraded", dagster_instance="unreachable", detail="; ".join(filter(None, (problem, stalled))),
                      refresh=refresh, refresh_failures=failures, webhook_failures=webhook_failures)
    return Health(status="degraded" if failures or webhook_failures or stalled else "ok", dagster_instance="ok",
                  detail=stalled, refresh=refresh, refresh_failures=failures, webhook_failures=webhook_failures)


@router.get("/health", response_model=Health | HealthStatus)
def health(service: Service, request: Request) -> Health | HealthStatus:
    """Without the API key only up or degraded: failures name batches and carry error text."""
    health = _health(service, request.app.state.refresher, request.app.state.instance_probe)
    return health if request.state.authorized else HealthStatus(status=health.status)


@router.get("/v1/models", response_model=ModelList)
def list_models(service: Service):
    try:
        registry = service.registry()
    except RegistryError as exc:
        raise ShimError(500, str(exc), kind="server_error") from None
    created = int(service.layout.registry.stat().st_mtime)
    return ModelList(data=[ModelObject(id=name, created=created) for name in registry.names()])


@router.get("/v1/queue", response_model=QueueView)
def queue(forecasts: Forecasts):
    return QueueView(data=queue_cells(forecasts.instance, forecasts.layout, slot_count=forecasts.slot_count))


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request):
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
