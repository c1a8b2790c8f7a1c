"""`batch-pipeline run-models`: a dataset on more registered models, one queued GPU run per pair."""

import argparse

from batch_pipeline.tools import run_models


def register(commands) -> None:
    parser = commands.add_parser("run-models", help="queue a dataset's runs on more models",
                                 description=run_models.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_models.add_arguments(parser)
    parser.set_defaults(run=run_models.run)
