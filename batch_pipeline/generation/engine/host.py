"""The warm engine between runs: vLLM's engine kept loaded in a process of ours, fed a whole job per call.

vLLM's OpenAI server costs an HTTP exchange, a JSON parse and a chat-template pass per request, in
processes that share the cores with the engine (0.89 of in-process throughput at 1,000 rows on the
2-core machine). Here a run posts all its requests at once and the engine is fed exactly as in process.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from batch_pipeline.generation.engine.factory import build_engine
from batch_pipeline.generation.engine.host_auth import IDENTITY_PATH, authorized, proof, read_secret
from batch_pipeline.generation.engine.host_protocol import GENERATE_PATH, HostFailure, HostJob, HostRequest, HostResult
from batch_pipeline.generation.engine.interface import EngineFailure, LoadedEngine, request_failure
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.protocol.answers import EngineRequest, EngineResult


class _Job:
    """Runs one job on a thread of its own (the engine blocks) and hands results to the event loop.

    The thread starts before the response does and always ends, so the engine is never left busy by a
    caller that went away before reading."""

    def __init__(self, engine: LoadedEngine, job: HostJob, requests: list[EngineRequest], busy: threading.Lock,
                 on_engine_failure: Callable[[], None]):
        self.on_engine_failure = on_engine_failure
        self.results: asyncio.Queue[str | None] = asyncio.Queue()
        self.stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(engine, job, requests, busy), daemon=True)
        self._thread.start()

    def _put(self, line: str | None) -> None:
        self._loop.call_soon_threadsafe(self.results.put_nowait, line)

    def _run(self, engine: LoadedEngine, job: HostJob, requests: list[EngineRequest], busy: threading.Lock) -> None:
        engine.use(job.spec)
        results = engine.stream(iter(requests), job.max_in_flight, should_stop=self.stop.is_set)
        try:
            for result in results:
                self._put(_result_line(result))
                if self.stop.is_set():
                    break
            results.close()
        except Exception as exc:  # the engine itself failed (a request's own failure is its result line)
            failure = exc.message if isinstance(exc, EngineFailure) else f"{type(exc).__name__}: {exc}"
            self._put(_line(HostFailure(failure=failure, suspects=getattr(exc, "suspects", None))))
            self._loop.call_soon_threadsafe(self.on_engine_failure)
        finally:
            busy.release()
            self._put(None)

    async def lines(self) -> AsyncIterator[str]:
        """A caller that disconnects is cancelled here, which stops the job at its next result."""
        try:
            while (line := await self.results.get()) is not None:
                yield line + "\n"
        finally:
            self.stop.set()


def _line(message: BaseModel) -> str:
    """ASCII JSON: a generated U+2028 or U+0085 left raw would split the line for a reader that
    splits on every Unicode line boundary (httpx's `iter_lines` does)."""
    return json.dumps(message.model_dump(mode="json"))


def _result_line(result: EngineResult) -> str:
    """A result that cannot be sent as it is (e.g. a completion no JSON can hold) is that request's 400."""
    try:
        return _line(HostResult.of(result))
    except Exception as exc:
        refusal = request_failure(exc, "send the answer to")
        return _line(HostResult.of(EngineResult(request=result.request, error=refusal)))


def _parse(body: bytes) -> tuple[HostJob, list[EngineRequest]]:
    header, *lines = body.splitlines()
    return HostJob.model_validate_json(header), [HostRequest.model_validate_json(line).engine_request()
                                                 for line in lines if line]


def _exit_soon() -> None:
    """Lets the failure line reach the run first; the supervisor then sees the host gone."""
    asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)


def create_host(engine: LoadedEngine, served_name: str, secret: str, on_engine_failure: Callable[[], None] = _exit_soon,
                busy_wait_seconds: float = 60) -> FastAPI:
    """Answers only callers holding `secret` (the run that started it, the shim's metrics), except for
    the identity proof a run asks for before it sends anything."""
    app = FastAPI(title="batch_pipeline engine host", openapi_url=None)
    busy = threading.Lock()

    @app.middleware("http")
    async def only_the_pipeline(request: Request, call_next):
        if request.url.path != IDENTITY_PATH and not authorized(request.headers.get("authorization"), secret):
            return JSONResponse({"error": "this engine host answers only the pipeline that started it"},
                                status_code=401)
        return await call_next(request)

    @app.get(IDENTITY_PATH)
    def identity(nonce: str) -> dict:
        return {"served": served_name, "proof": proof(secret, nonce, served_name)}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model"}]}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post(GENERATE_PATH)
    async def generate(request: Request) -> Response:
        try:
            job, requests = _parse(await request.body())
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": f"not a job: {exc}"}, status_code=400)
        if job.spec.fingerprint != engine.spec.fingerprint:
            return JSONResponse({"error": f"this host runs engine {engine.spec.fingerprint}, not the job's "
                                          f"{job.spec.fingerprint}"}, status_code=400)
        # A run that went away leaves its job aborting for up to one engine step: the next one waits.
        if not await asyncio.to_thread(busy.acquire, True, busy_wait_seconds):
            return JSONResponse({"error": "the engine is running another job"}, status_code=409)
        return StreamingResponse(_Job(engine, job, requests, busy, on_engine_failure).lines(), media_type="application/x-ndjson")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", required=True, type=int,
                        help="the loopback socket its supervisor bound and listens on before the engine loads")
    parser.add_argument("--secret-folder", required=True, type=Path, help="where the host's secret file is")
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--spec", required=True, help="the EngineSpec, as JSON")
    args = parser.parse_args()
    listening = socket.socket(fileno=args.fd)
    secret = read_secret(args.secret_folder)
    if secret is None:
        raise SystemExit(f"no engine host secret in {args.secret_folder}")
    engine = build_engine(EngineSpec.model_validate_json(args.spec), metrics=True)
    try:
        app = create_host(engine, args.served_name, secret)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listening])
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
