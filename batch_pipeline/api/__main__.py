"""`python -m batch_pipeline.api`: the OpenAI-compatible Batch API on uvicorn."""

import sys

import uvicorn

from batch_pipeline.api.app import create_app
from batch_pipeline.api.binding import listen_refusal
from batch_pipeline.core.logs import configure_logging
from batch_pipeline.core.privacy import apply_umask, private_folder
from batch_pipeline.core.settings import load_settings_or_exit


def main() -> None:
    settings = load_settings_or_exit("batch_pipeline.api")
    apply_umask(settings.share_with_group)
    if refusal := listen_refusal(settings):
        print(f"batch_pipeline.api: {refusal}", file=sys.stderr)
        sys.exit(2)
    private_folder(settings.data_dir)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.shim_host, port=settings.shim_port,
                log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
