"""`batch-pipeline curate`: takes a reviewed export back and builds the curated dataset."""

import argparse

from batch_pipeline.tools import curate


def register(commands) -> None:
    parser = commands.add_parser("curate", help="accept a reviewed export and build the curated dataset",
                                 description=curate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    curate.add_arguments(parser)
    parser.set_defaults(run=curate.run)
