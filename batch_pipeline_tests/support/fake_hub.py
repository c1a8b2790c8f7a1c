"""A loopback stand-in for the Hugging Face hub, serving one local folder as one model repository the
way huggingface_hub's `snapshot_download` asks for it: the revision's commit, the file tree, then each
file by `resolve` (HEAD for its metadata, GET for its bytes)."""

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from batch_pipeline.core.loopback import LOOPBACK

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(repo_id: str, folder: Path, requests: list[tuple[str, str]]) -> type[BaseHTTPRequestHandler]:
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}

    class Hub(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload) -> None:
            self._answer(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def do_GET(self):  # noqa: N802 (http.server's name)
            path = unquote(urlsplit(self.path).path)
            requests.append((self.command, path))
            if path == f"/api/models/{repo_id}/revision/main":
                return self._json({"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]})
            if path == f"/api/models/{repo_id}/tree/{COMMIT}":
                return self._json([{"type": "file", "path": name, "size": file.stat().st_size,
                                    "oid": hashlib.sha1(file.read_bytes()).hexdigest()} for name, file in files.items()])
            prefix = f"/{repo_id}/resolve/{COMMIT}/"
            if path.startswith(prefix) and path[len(prefix):] in files:
                data = files[path[len(prefix):]].read_bytes()
                return self._answer(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                                "Content-Type": "application/octet-stream"})
            return self._answer(404, b"", {"X-Error-Code": "EntryNotFound" if path.startswith(prefix) else "RepoNotFound"})

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    return Hub


@contextmanager
def fake_hub(repo_id: str, folder: Path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Yields the endpoint (for HF_ENDPOINT) and the requests it received."""
    requests: list[tuple[str, str]] = []
    server = ThreadingHTTPServer((LOOPBACK, 0), _handler(repo_id, folder, requests))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
