"""Whether the shim may listen where it is told to: without an API key, only this machine may reach it."""

import ipaddress

from batch_pipeline.core.settings import Settings


def is_loopback(host: str) -> bool:
    """Only a loopback address or `localhost` counts; any other name might resolve to a public address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_refusal(settings: Settings) -> str | None:
    """Why the shim must not start with these settings, in one line; None when it may."""
    if settings.shim_api_key or settings.shim_allow_unauthenticated or is_loopback(settings.shim_host):
        return None
    return (f"refusing to serve the API on {settings.shim_host}:{settings.shim_port} without an API key: set "
            "BATCH_PIPELINE_SHIM_API_KEY, listen on 127.0.0.1, or set BATCH_PIPELINE_SHIM_ALLOW_UNAUTHENTICATED=1 "
            "to let anyone who can reach it in")
