"""The OpenAI-compatible HTTP shim: its routers (files, batches, operations) over one ShimService, the
gatekeeper in front of them, and the background refresh and webhook delivery."""

import asyncio
import contextlib
import logging

import anyio
from dagster import DagsterInstance
from fastapi import FastAPI

from batch_pipeline.api.errors import ERROR_RESPONSES, install_error_handlers
from batch_pipeline.api.forecasts import BatchForecasts
from batch_pipeline.api.gatekeeper import Gatekeeper
from batch_pipeline.api.instance_probe import InstanceProbe
from batch_pipeline.api.metrics import ShimMetrics
from batch_pipeline.api.refresher import Refresher
from batch_pipeline.api.routers import batches, files, operations
from batch_pipeline.api.service import ShimService
from batch_pipeline.api.webhooks import WebhookConfig, WebhookSender
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import parse_slots

logger = logging.getLogger(__name__)


def create_app(settings: Settings, instance: DagsterInstance | None = None,
               refresh_interval_seconds: float = 2.0, webhook_poll_seconds: float = 1.0) -> FastAPI:
    instance = instance or DagsterInstance.get()
    service = ShimService(DataLayout(settings.data_dir), instance, settings.shim_completion_window_seconds,
                          settings.max_bytes, webhooks=WebhookConfig.from_settings(settings),
                          postgres_url=settings.postgres_url, upload_expiry_seconds=settings.upload_expiry_seconds)
    refresher = Refresher(service.refresh_active, refresh_interval_seconds, settings.shim_refresh_stall_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def deliver_forever(sender: WebhookSender):
            while True:  # failed deliveries are recorded against their events; anything else is logged
                try:
                    await anyio.to_thread.run_sync(sender.deliver_due)
                except Exception:
                    logger.exception("delivering webhook events failed; trying again")
                await asyncio.sleep(webhook_poll_seconds)

        tasks = [asyncio.create_task(refresher.run_forever())]
        if service.webhooks is not None:
            tasks.append(asyncio.create_task(deliver_forever(service.webhooks)))
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="batch_pipeline OpenAI-compatible Batch API", lifespan=lifespan,
                  responses=ERROR_RESPONSES)
    app.state.service = service
    app.state.refresher = refresher
    app.state.instance_probe = InstanceProbe(instance)
    app.state.forecasts = BatchForecasts(instance, service.layout, len(parse_slots(settings.gpu_slots)),
                                         strict=settings.shim_strict_completion_window)
    app.state.metrics = ShimMetrics(service, refresher, parse_slots(settings.gpu_slots))
    install_error_handlers(app)
    allowed_hosts = (*settings.allowed_hosts, settings.shim_host.lower())
    app.add_middleware(Gatekeeper, api_key=settings.shim_api_key, allowed_hosts=allowed_hosts,
                       max_upload_bytes=settings.max_bytes, max_json_bytes=settings.shim_max_json_bytes)
    for router in (files.router, batches.router, operations.router):
        app.include_router(router)
    return app
