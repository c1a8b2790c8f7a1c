"""A real HTTP receiver on loopback for webhook tests: records what arrives and answers as scripted."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI

# "whsec_" + base64, the form OpenAI hands out.
SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY3ODkw"


class Receiver:
    """`answers` are the HTTP statuses of the first deliveries, in order; 200 after them."""

    def __init__(self, answers: tuple[int, ...] = ()):
        self.answers = list(answers)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def events(self, secret: str = SECRET) -> list:
        """Every delivery, checked and parsed by the official openai client (raises on a bad signature)."""
        client = OpenAI(api_key="unused", webhook_secret=secret)
        return [client.webhooks.unwrap(body, headers) for headers, body in self.received]
