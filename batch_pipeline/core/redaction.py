"""URLs and messages fit for a log: credentials a URL carries (user info, query values) never reach one."""

from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"


def _secrets(url: str) -> list[str]:
    """The parts of `url` that may be credentials: user name, password, query values, fragment."""
    try:
        parts = urlsplit(url)
        found = [parts.username, parts.password, parts.fragment,
                 *(value for _, value in parse_qsl(parts.query, keep_blank_values=True))]
    except ValueError:
        return [url]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """Scheme, host, port and path; user info and each query value masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return MASK
    if parts.username or parts.password:
        netloc = f"{MASK}@{netloc}"
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str, url: str) -> str:
    """`text` (an error message that may quote `url`) with every credential of `url` masked."""
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text
