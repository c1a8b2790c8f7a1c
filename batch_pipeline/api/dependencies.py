"""What a route is handed: the one ShimService its app was built with."""

from typing import Annotated

from fastapi import Depends, Request

from batch_pipeline.api.forecasts import BatchForecasts
from batch_pipeline.api.service import ShimService


def _service(request: Request) -> ShimService:
    return request.app.state.service


def _forecasts(request: Request) -> BatchForecasts:
    return request.app.state.forecasts


Service = Annotated[ShimService, Depends(_service)]
Forecasts = Annotated[BatchForecasts, Depends(_forecasts)]
