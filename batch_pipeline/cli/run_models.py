"""`batch-pipeline run-models`: a dataset on more registered models, one queued GPU run per pair.

    batch-pipeline run-models --dataset KEY --models MODEL [MODEL ...]

Each run joins the Dagster instance's queue exactly like the sensors' runs (one GPU run at a time)
and the daemon started by `batch-pipeline serve` takes it from there; the dataset's `model_comparison`
follows once they have finished. A model registered after the dataset arrived gets its `models`
partition (its column in the UI) here.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", nargs="+", required=True, help="dataset key(s), as in data/datasets/")
    parser.add_argument("--models", nargs="+", required=True, help="registered model name(s)")


def run(settings, args: argparse.Namespace) -> None:
    from batch_pipeline.core.resources import PipelineConfig
    from batch_pipeline.tools.cli import open_instance
    from batch_pipeline.tools.run_models import run_models

    with open_instance(settings) as instance:
        for line in run_models(instance, PipelineConfig.from_settings(settings), args.dataset, args.models):
            print(line)


def register(commands) -> None:
    parser = commands.add_parser("run-models", help="queue a dataset's runs on more models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
