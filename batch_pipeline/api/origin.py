"""Which requests come from where the shim expects: its own Host names, and not from a web page.

A browser lets any page send requests to 127.0.0.1. A page of a name the attacker re-points at
127.0.0.1 (DNS rebinding) reads the answers too, but its requests carry the attacker's name as Host;
a page that only writes (a form posting a multipart upload is a CORS "simple" request) sends an
Origin and, in current browsers, `Sec-Fetch-Site: cross-site`. Clients that are not browsers (the
openai client, curl) send neither.
"""

from urllib.parse import urlsplit

from batch_pipeline.api.binding import is_loopback

# What a browser reports for a request a user typed or a page of the same origin made.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port ("[::1]:4080" -> "::1")."""
    try:
        return (urlsplit(f"//{host_header}").hostname or "").lower()
    except ValueError:  # an unparsable port or bracket
        return ""


def host_allowed(host_header: str | None, allowed: tuple[str, ...]) -> bool:
    """A loopback name or address, or one of the configured names; a missing Host is refused."""
    name = host_name(host_header or "")
    return bool(name) and (is_loopback(name) or name in allowed)


def cross_site(headers: dict[str, str]) -> bool:
    """True for a request a web page of another origin made: a `Sec-Fetch-Site` other than same-origin
    or none, or an `Origin` whose host and port are not the ones the request was sent to (an opaque
    "null" origin included). The scheme is not compared: a TLS proxy in front changes it."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in _OWN_FETCH_SITES:
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return True
    return not netloc or netloc.lower() != headers.get("host", "").lower()
