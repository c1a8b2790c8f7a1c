"""`batch-pipeline serve`: what `make run` starts (the Dagster webserver and daemon, the API, the demo batch)."""

from batch_pipeline.tools import serve


def register(commands) -> None:
    parser = commands.add_parser("serve", help="start the Dagster UI and daemon and the OpenAI-compatible API",
                                 description=serve.__doc__)
    serve.add_arguments(parser)
    parser.set_defaults(run=serve.serve)
