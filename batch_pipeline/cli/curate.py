"""`batch-pipeline curate`: takes a reviewed export back: checks it, keeps it as the dataset's accepted
review, and materializes `curated_dataset` (the kept rows as Parquet and as a chat fine-tuning JSONL).

    batch-pipeline curate --dataset KEY --reviewed FILE.parquet|FILE.csv

Start from data/datasets/KEY/review/export.parquet (or export.csv) and fill in chosen_model,
rating (1-5), keep (true/false) and notes; edit the chosen answer's cell to correct it. Nothing is
written unless every row is valid; each problem is printed as `row N, column C: ...`.
"""

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset key, as in data/datasets/")
    parser.add_argument("--reviewed", type=Path, required=True, help="the reviewed export (.parquet or .csv)")


def run(settings, args: argparse.Namespace) -> int:
    """Exit code 1 when the review was not accepted (each problem printed), 0 once curated."""
    from batch_pipeline.core.resources import PipelineConfig
    from batch_pipeline.curation.review import ReviewError
    from batch_pipeline.tools.cli import open_instance
    from batch_pipeline.tools.curate import curate

    try:
        with open_instance(settings) as instance:
            print(curate(instance, PipelineConfig.from_settings(settings), args.dataset, args.reviewed))
    except ReviewError as exc:
        print(f"curate: {args.reviewed} was not accepted:\n{exc}", file=sys.stderr)
        return 1
    return 0


def register(commands) -> None:
    parser = commands.add_parser("curate", help="accept a reviewed export and build the curated dataset",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
