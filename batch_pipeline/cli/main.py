"""`batch-pipeline <command>`: serve, submit, status, retry, models, run-models, curate, doctor."""

import argparse
import sys
from collections.abc import Sequence

from batch_pipeline.cli import curate, doctor, models, retry, run_models, serve, status, submit
from batch_pipeline.core.settings import SettingsError, load_settings
from batch_pipeline.tools.cli import ToolError

PROGRAM = "batch-pipeline"
_GROUPS = (serve, submit, status, retry, models, run_models, curate, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Self-hosted OpenAI-compatible batch inference "
                                     "on vLLM and Dagster. `batch-pipeline COMMAND --help` for each command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.run(load_settings(), args) or 0)
    except (ToolError, SettingsError) as exc:
        print(f"{PROGRAM} {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
