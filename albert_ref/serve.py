"""`albert-ref serve`: an HTTP embedding server whose vectors never depend on the traffic.

Routes: OpenAI's `POST /v1/embeddings`, text-embeddings-inference's `POST /embed` and
`POST /tokenize`, and `GET /health`, `/info`, `/metrics` (Prometheus text). Texts are
tokenized on worker threads, queued, and run by the Batcher (serve_batcher) in
least-padding batches on one compute thread; the bit contract makes every vector equal,
bit for bit, to the one `albert-ref embed` gives the same text alone.

Overload and bad input are answered, never fatal: 429 with Retry-After beyond
max_concurrent_requests, 413 beyond payload_limit, 400/422 for bodies that are not JSON
or ask for something wrong (serve_inputs), 503 until the model is loaded and warm.

Needs the `serve` extra (starlette, uvicorn with httptools and uvloop, orjson,
prometheus-client).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import prometheus_client as prom
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from albert_ref.encoder import Encoder, _check_count, l2_normalize, resolve_pooling
from albert_ref.errors import InputError
from albert_ref.ops import CONTRACT_BACKENDS
from albert_ref.serve_batcher import BatchStats, Batcher
from albert_ref.serve_inputs import (DEFAULTS, TRUNCATION_DIRECTIONS, RequestError, encode_whole, inputs, invalid, option,
                                     parse_body, sequences)

log = logging.getLogger(__name__)
WORK_ROUTES = ("/v1/embeddings", "/embed", "/tokenize")
ROUTES = (*WORK_ROUTES, "/health", "/info", "/metrics")
DISCONNECTED = 499  # nginx's "client closed request": recorded in the metrics, never sent


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, service: "Service"):
        self.registry = reg = prom.CollectorRegistry()
        self.requests = prom.Counter("albert_ref_requests", "HTTP requests answered, by route and status",
                                     ["route", "status"], registry=reg)
        self.latency = prom.Histogram("albert_ref_request_duration_seconds", "time to answer a request, by route",
                                      ["route"], registry=reg,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        prom.Gauge("albert_ref_requests_in_flight", "embedding and tokenization requests being served",
                   registry=reg).set_function(lambda: service.in_flight)
        prom.Gauge("albert_ref_queue_texts", "texts waiting for a forward pass",
                   registry=reg).set_function(lambda: service.batcher.queued_texts)
        powers = tuple(2.0 ** k for k in range(17))
        self.batch_texts = prom.Histogram("albert_ref_batch_texts", "texts per forward pass", registry=reg,
                                          buckets=powers[:11])
        self.batch_tokens = prom.Histogram("albert_ref_batch_tokens",
                                           "padded tokens per forward pass (texts x longest)", registry=reg,
                                           buckets=powers)
        self.forward = prom.Histogram("albert_ref_forward_seconds", "time of one forward pass", registry=reg,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.tokens = prom.Counter("albert_ref_tokens", "tokens embedded, [CLS] and [SEP] included", registry=reg)

    def batch(self, stats: BatchStats) -> None:
        self.batch_texts.observe(stats.texts)
        self.batch_tokens.observe(stats.padded_tokens)
        self.forward.observe(stats.seconds)
        self.tokens.inc(stats.tokens)


class Service:
    """What the routes share: the settings, the batcher, the metrics, the open slots."""

    def __init__(self, model, *, pooling, normalize, max_seq_length, backend, threads, max_batch_tokens,
                 max_batch_requests, batch_window_ms, max_concurrent_requests, max_client_batch_size, payload_limit,
                 on_fatal):
        from albert_ref.model import Model
        if pooling is not None:
            resolve_pooling(None, pooling)  # checked now; None: the model's pipeline, resolved on loading
        if backend not in CONTRACT_BACKENDS:
            raise InputError(f"the server runs on the bit-contract backends ({', '.join(CONTRACT_BACKENDS)}), "
                             f"where a vector cannot depend on its batch; not {backend!r}")
        if isinstance(model, Model) and model.backend not in CONTRACT_BACKENDS:
            raise InputError(f"the model is loaded on the {model.backend!r} backend; the server needs one of "
                             f"{', '.join(CONTRACT_BACKENDS)}")
        for name, value in [("max_batch_tokens", max_batch_tokens), ("max_batch_requests", max_batch_requests),
                            ("max_concurrent_requests", max_concurrent_requests),
                            ("max_client_batch_size", max_client_batch_size), ("payload_limit", payload_limit)]:
            _check_count(name, value)
        if not batch_window_ms >= 0:
            raise InputError(f"batch_window_ms must be at least 0, not {batch_window_ms!r}")
        self.model_source = model
        path = model.path if isinstance(model, Model) else model
        self.name = Path(path).stem if path else "albert-ref"  # the "model" of OpenAI responses
        self.normalize = normalize  # None until the model is loaded: then the pipeline's choice
        self.requested_max_seq_length = max_seq_length
        self.max_seq_length: int | None = None  # known once the model is loaded
        self.backend, self.threads = backend, threads
        self.max_concurrent_requests = max_concurrent_requests
        self.max_client_batch_size = max_client_batch_size
        self.payload_limit = payload_limit
        self.in_flight = 0
        self.metrics = Metrics(self)
        self.batcher = Batcher(self._load, pooling=pooling, max_batch_tokens=max_batch_tokens,
                               max_batch_requests=max_batch_requests, window_s=batch_window_ms / 1000,
                               on_batch=self.metrics.batch, on_fatal=on_fatal)

    def _load(self) -> Encoder:  # on the compute thread
        from albert_ref.model import Model, load
        model = self.model_source
        if not isinstance(model, Model):
            model = load(model, backend=self.backend, threads=self.threads)
        encoder = Encoder(model)
        self.max_seq_length = encoder.max_seq_length(self.requested_max_seq_length)
        self.normalize = encoder.normalizes(self.normalize)
        if self.batcher.max_batch_tokens < self.max_seq_length:
            raise InputError(f"max_batch_tokens {self.batcher.max_batch_tokens} is less than max_seq_length "
                             f"{self.max_seq_length}: a longest text would not fit in a batch")
        return encoder

    @property
    def encoder(self) -> Encoder:
        return self.batcher.encoder

    def tokenize(self, inp, truncate=False, direction="right") -> list[np.ndarray]:
        return sequences(self.encoder.tokenizer, inp, self.max_seq_length, truncate, direction)

    async def embed(self, seqs, prepared_s: float, normalize=None) -> tuple[np.ndarray, dict]:
        """Vectors for tokenized inputs, and text-embeddings-inference's headers: the tokens
        (tokens_of(seqs)), and the milliseconds spent reading and tokenizing (prepared_s),
        waiting, computing."""
        start = time.perf_counter()
        done = await self.batcher.embed(seqs)
        vectors = done.vectors
        if self.normalize if normalize is None else normalize:
            vectors = l2_normalize(vectors)
        batched = time.perf_counter() - start
        ms = {"tokenization": prepared_s, "queue": max(0.0, batched - done.inference_s),
              "inference": done.inference_s, "total": prepared_s + batched}
        return vectors, {"x-compute-tokens": str(tokens_of(seqs)),
                         **{f"x-{k}-time": str(round(1e3 * v, 3)) for k, v in ms.items()}}

    def info(self) -> dict:
        from albert_ref import __version__
        from albert_ref.kernels import CONTRACT_VERSION
        model, b = self.encoder.model, self.batcher
        return {"model": self.name, "version": __version__, "file": None if model.path is None else str(model.path),
                "digest": model.digest, "config": model.config.to_dict(), "dimensions": b.dim,
                "backend": model.backend, "pooling": ",".join(self.encoder.pooling_modes(b.pooling)),
                "normalize": self.normalize,
                "max_seq_length": self.max_seq_length, "contract_version": CONTRACT_VERSION,
                "limits": {"max_batch_tokens": b.max_batch_tokens, "max_batch_requests": b.max_batch_requests,
                           "batch_window_ms": b.window_s * 1000,
                           "max_concurrent_requests": self.max_concurrent_requests,
                           "max_client_batch_size": self.max_client_batch_size,
                           "payload_limit": self.payload_limit}}


class JSON(JSONResponse):
    """A JSON response rendered by orjson, which writes numpy arrays natively: the number
    lists of 32 base-shape vectors take ~1 ms on the event loop, json's ~13 ms."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def json_numbers(vectors: np.ndarray) -> np.ndarray:
    """float32 vectors for JSON number lists: as float64, so that each number is written
    as the float32's exact value (what json writes for float(v)); JSON has no NaN or
    infinity, so a vector holding one is an error, not a silent null."""
    if not np.isfinite(vectors).all():
        raise ValueError("a vector has non-finite values, which JSON numbers cannot carry")
    return vectors.astype(np.float64)


def tokens_of(seqs) -> int:
    """The tokens of tokenized inputs, [CLS] and [SEP] included: what usage counts."""
    return sum(len(s) for s in seqs)


def error_response(path: str, status: int, message: str, headers: dict | None = None) -> JSON:
    """An error in the route's own dialect: OpenAI's {"error": {...}} under /v1/, else
    text-embeddings-inference's {"error": ..., "error_type": ...}."""
    if path.startswith("/v1/"):
        kind = {429: "rate_limit_error", 503: "service_unavailable"}.get(status, "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    else:
        kind = {429: "Overloaded", 503: "Unhealthy"}.get(status, "Validation")
        body = {"error": message, "error_type": kind if status < 500 or status == 503 else "Backend"}
    return JSON(body, status_code=status, headers=headers)


class _Gate:
    """ASGI middleware: the concurrency limit (429 at once) on the work routes, and the
    request metrics on every route."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service, path = self.service, scope["path"]
        route = path if path in ROUTES else "other"
        status, start = 500, time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if path not in WORK_ROUTES:
                return await self.app(scope, receive, send_status)
            if service.in_flight >= service.max_concurrent_requests:
                response = error_response(path, 429, f"the server is serving its maximum of "
                                          f"{service.max_concurrent_requests} concurrent requests; retry shortly",
                                          headers={"Retry-After": "1"})
                return await response(scope, receive, send_status)
            service.in_flight += 1
            try:
                await self.app(scope, receive, send_status)
            finally:
                service.in_flight -= 1
        finally:
            service.metrics.requests.labels(route, str(status)).inc()
            service.metrics.latency.labels(route).observe(time.perf_counter() - start)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = f"the request body is larger than the server's --payload-limit of {limit} bytes"
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _work_route(service: Service, prepare: Callable, respond: Callable):
    """A route that reads a JSON body and does model work: 503 until ready. prepare(obj)
    checks (and tokenizes) on a worker thread, with the JSON parsing: one hop off the
    event loop; respond(job, seconds prepare took) answers. The answer is abandoned, and
    its queued texts withdrawn, if the client disconnects first."""
    def parse_and_prepare(body):
        start = time.perf_counter()
        job = prepare(parse_body(body))
        return job, time.perf_counter() - start

    async def work(body):
        return await respond(*await asyncio.to_thread(parse_and_prepare, body))

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        if not service.batcher.ready.is_set():
            return error_response(path, 503, "the model is not loaded yet" if service.batcher.error is None else
                                  f"the model failed to load: {service.batcher.error}")
        try:
            task = asyncio.ensure_future(work(await _read_body(request, service.payload_limit)))
            gone = asyncio.ensure_future(_disconnect(request))
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            for t in (task, gone):
                t.cancel()
            if not task.done() or task.cancelled():
                with contextlib.suppress(BaseException):
                    await task
                return Response(status_code=DISCONNECTED)
            return task.result()
        except RequestError as exc:
            return error_response(path, exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - the compute side failed (or shut down): say so in the route's dialect
            log.exception("albert-ref serve: %s failed", path)
            return error_response(path, 500, f"the server could not compute this request: {exc}")
    return endpoint


def _openai_embeddings(service: Service):
    def prepare(obj):
        inp = inputs(obj, "input", service.max_client_batch_size, service.encoder.model.config.vocab_size)
        option(obj, "model", str, None)
        option(obj, "user", str, None)
        fmt = option(obj, "encoding_format", str, "float", choices=("float", "base64"))
        dimensions = option(obj, "dimensions", int, None)
        if dimensions is not None and dimensions != service.batcher.dim:
            raise invalid(f"dimensions {dimensions} is not offered: this model's vectors have "
                          f"{service.batcher.dim} dimensions (omit the field or give {service.batcher.dim})")
        return service.tokenize(inp), fmt

    async def respond(job, prepared_s):
        seqs, fmt = job
        vectors, headers = await service.embed(seqs, prepared_s)
        tokens = tokens_of(seqs)
        if fmt == "base64":
            vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            vectors = json_numbers(vectors)
        return JSON({"object": "list", "model": service.name,
                     "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)
    return prepare, respond


def _tei_embed(service: Service):
    def prepare(obj):
        inp = inputs(obj, "inputs", service.max_client_batch_size, service.encoder.model.config.vocab_size)
        normalize = option(obj, "normalize", bool, None)
        truncate = option(obj, "truncate", bool, False)
        direction = option(obj, "truncation_direction", str, "right")
        if direction.lower() not in TRUNCATION_DIRECTIONS:
            raise invalid(f"truncation_direction must be 'right' or 'left', not {direction!r}")
        return service.tokenize(inp, truncate, direction.lower()), normalize

    async def respond(job, prepared_s):
        seqs, normalize = job
        vectors, headers = await service.embed(seqs, prepared_s, normalize)
        return JSON(json_numbers(vectors), headers=headers)
    return prepare, respond


def _tei_tokenize(service: Service):
    def prepare(obj):
        inp = inputs(obj, "inputs", service.max_client_batch_size, service.encoder.model.config.vocab_size)
        if not all(isinstance(item, str) for item in inp.items):
            raise invalid("inputs must be a string or a list of strings: /tokenize takes texts")
        special = option(obj, "add_special_tokens", bool, True)
        out = []
        for i, text in enumerate(inp.items):
            enc = encode_whole(service.encoder.tokenizer, text, f"inputs[{i}]")
            ends = (0, len(enc.pieces) - 1)
            out.append([{"id": int(t), "text": p, "special": k in ends}
                        for k, (t, p) in enumerate(zip(enc.input_ids, enc.pieces)) if special or k not in ends])
        return out

    async def respond(job, prepared_s):
        return JSON(job)
    return prepare, respond


def create_app(model=None, *, pooling: str | None = None, normalize: bool | None = None,
               max_seq_length: int | None = None,
               backend: str = "cpu", threads: int | None = None, max_batch_tokens: int = DEFAULTS["max_batch_tokens"],
               max_batch_requests: int = DEFAULTS["max_batch_requests"],
               batch_window_ms: float = DEFAULTS["batch_window_ms"],
               max_concurrent_requests: int = DEFAULTS["max_concurrent_requests"],
               max_client_batch_size: int = DEFAULTS["max_client_batch_size"],
               payload_limit: int = DEFAULTS["payload_limit"],
               on_fatal: Callable[[BaseException], None] | None = None) -> Starlette:
    """The server as an ASGI app, for uvicorn or any ASGI server.

    model: an albert-ref .h5 path (default: the bundled demo model) or a loaded Model on
    a bit-contract backend. It is loaded and warmed on the compute thread when the app
    starts (ASGI lifespan); /health answers 503 until then. on_fatal(exc) is called on
    that thread if loading fails. Options as `albert-ref serve --help` describes them."""
    if model is None:
        from albert_ref.weights import DEMO_MODEL
        model = DEMO_MODEL
    service = Service(model, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length, backend=backend,
                      threads=threads, max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests,
                      batch_window_ms=batch_window_ms, max_concurrent_requests=max_concurrent_requests,
                      max_client_batch_size=max_client_batch_size, payload_limit=payload_limit, on_fatal=on_fatal)

    async def health(request):
        if service.batcher.ready.is_set():
            return JSON({"status": "ok"})
        if service.batcher.error is not None:
            return error_response("/health", 503, f"the model failed to load: {service.batcher.error}")
        return error_response("/health", 503, "the model is loading")

    async def info(request):
        if not service.batcher.ready.is_set():
            return error_response("/info", 503, "the model is loading")
        return JSON(service.info())

    async def metrics(request):
        return Response(prom.generate_latest(service.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await asyncio.to_thread(service.batcher.close)

    app = Starlette(routes=[
        Route("/v1/embeddings", _work_route(service, *_openai_embeddings(service)), methods=["POST"]),
        Route("/embed", _work_route(service, *_tei_embed(service)), methods=["POST"]),
        Route("/tokenize", _work_route(service, *_tei_tokenize(service)), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_Gate, service=service)
    return app
