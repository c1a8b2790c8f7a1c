"""`python -m batch_pipeline.shim`: the OpenAI-compatible Batch API on uvicorn."""

import uvicorn

from batch_pipeline.shim.app import create_app
from batch_pipeline.shim.settings import ShimSettings


def main() -> None:
    settings = ShimSettings.from_env()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
