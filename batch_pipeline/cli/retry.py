"""`batch-pipeline retry BATCH [--codes CODE ...]`: a new batch of a finished batch's failed lines (every
line of its error file, or those with the given codes) through the API's retry extension; prints the new
batch's id. `GET /v1/batches/BATCH/results` then merges the answers."""

from __future__ import annotations

import argparse

from batch_pipeline.cli import shim_arguments
from batch_pipeline.core.settings import Settings
from batch_pipeline.tools.cli import ToolError


def register(commands) -> None:
    parser = commands.add_parser("retry", help="retry a finished batch's failed lines as a new batch",
                                 description=__doc__)
    parser.add_argument("batch", help="a finished batch's id (batch_...)")
    parser.add_argument("--codes", nargs="+", metavar="CODE",
                        help="only the lines with one of these codes: an HTTP status (500) or an error code "
                             "(batch_expired)")
    shim_arguments.add_arguments(parser)
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    import httpx
    from openai import APIConnectionError, APIStatusError  # the client takes a second to import

    from batch_pipeline.cli import shim

    url = shim.base_url(settings, args)
    try:
        response = shim.client(settings, args).post(f"/batches/{args.batch}/retry", cast_to=httpx.Response,
                                                    body={"codes": args.codes} if args.codes else {})
    except APIStatusError as exc:
        error = exc.body if isinstance(exc.body, dict) else {}
        raise ToolError(error.get("message") or str(exc)) from None
    except (APIConnectionError, httpx.TransportError) as exc:
        raise shim.not_answering(url, exc) from None
    print(response.json()["id"])
    return 0
