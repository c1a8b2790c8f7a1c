"""The OpenAI-compatible API as a client sees it: the official `openai` client, pointed at our shim
(its options: cli.shim_arguments)."""

import argparse

from openai import OpenAI

from batch_pipeline.core.loopback import direct_client, is_loopback
from batch_pipeline.core.settings import Settings
from batch_pipeline.tools.cli import ToolError

# What the shim accepts when it has no key configured (the client insists on some string).
_NO_KEY = "not-needed"


def base_url(settings: Settings, args: argparse.Namespace) -> str:
    host = "127.0.0.1" if settings.shim_host in ("0.0.0.0", "::") else settings.shim_host
    return args.url or f"http://{host}:{settings.shim_port}/v1"


def client(settings: Settings, args: argparse.Namespace) -> OpenAI:
    url = base_url(settings, args)
    # Our own machine's API is never reached through a proxy (core.loopback).
    http_client = direct_client(timeout=60) if is_loopback(url) else None
    return OpenAI(base_url=url, api_key=args.api_key or settings.shim_api_key or _NO_KEY, http_client=http_client,
                  max_retries=2)


def not_answering(url: str, exc: Exception) -> ToolError:
    return ToolError(f"the API does not answer at {url} ({exc.__cause__ or exc}); start it with "
                     "`batch-pipeline serve` (or `make run`), or pass --url")
