"""What a route is handed: the one ShimService its app was built with."""

from typing import Annotated

from fastapi import Depends, Request

from batch_pipeline.api.service import ShimService


def _service(request: Request) -> ShimService:
    return request.app.state.service


Service = Annotated[ShimService, Depends(_service)]
