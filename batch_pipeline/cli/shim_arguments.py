"""The options of the commands that talk to the API (imported by every command: kept light)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the API's base URL (default: http://<BATCH_PIPELINE_SHIM_HOST>:"
                                      "<BATCH_PIPELINE_SHIM_PORT>/v1)")
    parser.add_argument("--api-key", help="the API key (default: BATCH_PIPELINE_SHIM_API_KEY)")
