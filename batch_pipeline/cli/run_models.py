"""`batch-pipeline run-models`: a dataset on more registered models, one queued GPU run per pair.

    batch-pipeline run-models --dataset KEY --models MODEL [MODEL ...] [--exact]

Each run joins the Dagster instance's queue exactly like the sensors' runs (one GPU run at a time)
and the daemon started by `batch-pipeline serve` takes it from there; the dataset's `model_comparison`
follows once they have finished. A model registered after the dataset arrived gets its `models`
partition (its column in the UI) here.

With --exact a run refuses, before generating anything, when the engine recorded in the cell's
manifest.json (weights, tokenizer, vLLM, engine arguments, sampling defaults, adapter) differs from
today's registry and files, naming each field that changed; a cell that already has results is queued
again just to check that (it loads no engine). To regenerate a cell exactly, delete its chunks/ and
output files but keep manifest.json.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", nargs="+", required=True, help="dataset key(s), as in data/datasets/")
    parser.add_argument("--models", nargs="+", required=True, help="registered model name(s)")
    parser.add_argument("--exact", action="store_true",
                        help="refuse to run a cell whose recorded manifest names another engine than today's")


def run(settings, args: argparse.Namespace) -> None:
    from batch_pipeline.core.resources import PipelineConfig
    from batch_pipeline.tools.cli import open_instance
    from batch_pipeline.tools.run_models import run_models

    with open_instance(settings) as instance:
        for line in run_models(instance, PipelineConfig.from_settings(settings), args.dataset, args.models,
                               exact=args.exact):
            print(line)


def register(commands) -> None:
    parser = commands.add_parser("run-models", help="queue a dataset's runs on more models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
