"""`python -m batch_pipeline.api`: the OpenAI-compatible Batch API on uvicorn."""

import uvicorn

from batch_pipeline.api.app import create_app
from batch_pipeline.core.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.shim_host, port=settings.shim_port, log_level="info")


if __name__ == "__main__":
    main()
