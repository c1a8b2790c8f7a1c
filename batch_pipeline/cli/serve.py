"""`batch-pipeline serve`: what `make run` starts (the Dagster webserver and daemon, the API, the demo batch)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="the Dagster UI's address (default: BATCH_PIPELINE_UI_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the Dagster UI's port (default: BATCH_PIPELINE_UI_PORT, 3000)")
    parser.add_argument("--shim-port", type=int,
                        help="the OpenAI-compatible API's port (default: BATCH_PIPELINE_SHIM_PORT, 4080)")
    parser.add_argument("--no-demo", action="store_true", help="do not drop the demo batch")


def run(settings, args: argparse.Namespace) -> int:
    from batch_pipeline.tools.serve import serve

    return serve(settings, args)


def register(commands) -> None:
    parser = commands.add_parser("serve", help="start the Dagster UI and daemon and the OpenAI-compatible API",
                                 description="Starts the Dagster webserver and daemon and the OpenAI-compatible API "
                                 "(what `make run` starts), drops the demo batch and preloads the first model. "
                                 "Ctrl-C stops everything.")
    add_arguments(parser)
    parser.set_defaults(run=run)
