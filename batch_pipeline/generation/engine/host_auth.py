"""How a run and its engine host know each other: a secret per host, created with it.

The secret lives in a 0600 file in the slot's 0700 folder, so only the service's user can read it.
Every call to the host carries it (checked in constant time); before a run sends a prompt it asks
the host to prove it holds the secret (an HMAC over a fresh nonce, which reveals nothing of the
secret), so a process that sits on the host's port never receives a prompt or the secret itself
from a run that did not first check it.
"""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import httpx

from batch_pipeline.core.privacy import secret_folder

SECRET_FILE = "host.secret"
IDENTITY_PATH = "/v1/identity"
_IDENTITY_TIMEOUT_SECONDS = 5.0


def new_secret(folder: Path) -> str:
    """A fresh secret written to `folder/host.secret` (0600, folder 0700), replacing the last host's."""
    secret = secrets.token_hex(32)
    secret_folder(folder)
    temp = folder / f"{SECRET_FILE}.tmp-{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, 0o600)  # an earlier leftover of this name kept its old mode
    os.replace(temp, folder / SECRET_FILE)
    return secret


def read_secret(folder: Path) -> str | None:
    try:
        return (folder / SECRET_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def auth_headers(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def authorized(header: str | None, secret: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), secret.encode())


def proof(secret: str, nonce: str, served_name: str) -> str:
    return hmac.new(secret.encode(), f"{nonce}:{served_name}".encode(), hashlib.sha256).hexdigest()


def proves_identity(client: httpx.Client, secret: str, served_name: str,
                    timeout: float = _IDENTITY_TIMEOUT_SECONDS) -> bool:
    """True only if what answers on `client`'s address holds `secret` and serves `served_name`; sends
    neither the secret nor anything of a job."""
    nonce = secrets.token_hex(16)
    try:
        response = client.get(IDENTITY_PATH, params={"nonce": nonce}, timeout=timeout)
        answer = response.json()
        return response.status_code == 200 and answer["served"] == served_name and \
            hmac.compare_digest(str(answer["proof"]), proof(secret, nonce, served_name))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False
