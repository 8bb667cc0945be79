"""`albert-ref serve`: the command that runs the embedding server (albert_ref.serve) on uvicorn.

Kept apart from serve.py so that the command line loads without the `serve` extra and
says what to install when it is missing.
"""
from __future__ import annotations

import argparse
import signal
import sys

from albert_ref.errors import AlbertRefError

DESCRIPTION = """\
Serve ALBERT embeddings over HTTP: OpenAI's POST /v1/embeddings, text-embeddings-inference's
POST /embed and /tokenize, GET /health, /info and /metrics (Prometheus). Requests from
concurrent clients are batched together; every vector is bit for bit the one
`albert-ref embed` gives the same text, whatever it was batched with.
"""

EPILOG = """\
examples:
  albert-ref serve --model albert_xlarge_2.h5 --pooling mean --normalize --port 8080
  curl -s localhost:8080/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{"model": "albert", "input": ["A cat.", "A dog."]}'
"""


LIMIT_HELP = {
    "max_batch_tokens": "most padded tokens (texts x longest) in one forward pass",
    "max_batch_requests": "most texts in one forward pass",
    "batch_window_ms": "how long an idle server waits for company before running a text",
    "max_concurrent_requests": "requests served at once; more get 429 with Retry-After",
    "max_client_batch_size": "most inputs in one request; more get 422",
    "payload_limit": "largest request body in bytes; larger get 413",
}


def add_serve_parser(sub) -> None:
    from albert_ref.serve_inputs import DEFAULTS
    p = sub.add_parser("serve", help="an HTTP embedding server (OpenAI and text-embeddings-inference routes)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", help="albert-ref .h5 model file (default: the bundled demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--pooling", metavar="MODE", help="as for `albert-ref embed` (default: the model's pipeline, "
                                                     "else pooled)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each vector to unit L2 norm (default: as the model's pipeline says, else not; "
                        "/embed's \"normalize\" overrides it per request)")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="longest input in tokens (default: the model's pipeline's, else its maximum); "
                        "longer ones are refused unless /embed asks to truncate")
    for name, help in LIMIT_HELP.items():  # the server's limits, defaulting as create_app does
        p.add_argument("--" + name.replace("_", "-"), type=type(DEFAULTS[name]), default=DEFAULTS[name],
                       help=help + " (default %(default)s)")
    from albert_ref.cli_options import add_backend_options
    from albert_ref.ops import CONTRACT_BACKENDS
    add_backend_options(p, CONTRACT_BACKENDS)  # the bit contract is the server's promise: float32, no numpy
    p.set_defaults(func=run_serve)


def run_serve(args) -> None:
    try:
        import uvicorn

        from albert_ref.serve import create_app
    except ImportError as exc:
        raise AlbertRefError(f"albert-ref serve needs the serve extra: pip install 'albert-ref[serve]' ({exc})") \
            from None
    model = args.model
    if model is None:
        from albert_ref.weights import DEMO_MODEL
        model = DEMO_MODEL
        print("albert-ref: no --model: using the bundled demo model (random weights: the vectors mean nothing)",
              file=sys.stderr)
    failure = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # SIGTERM / Ctrl-C: uvicorn stops accepting and waits for the requests in
            # flight; the batcher stops waiting for company so that they finish at once.
            app.state.service.batcher.drain()
            super().handle_exit(sig, frame)

    def on_fatal(exc):  # on the compute thread: the model cannot be served
        failure.append(exc)
        server.should_exit = True

    app = create_app(model, pooling=args.pooling, normalize=args.normalize, max_seq_length=args.max_seq_length,
                     backend=args.backend, threads=args.threads, on_fatal=on_fatal,
                     **{name: getattr(args, name) for name in LIMIT_HELP})
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=False))
    # uvicorn re-raises the SIGTERM it handled once it has shut down, under the handler
    # found at start: make that one a no-op, so that a graceful stop exits 0.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure:
        raise AlbertRefError(f"cannot serve {model}: {failure[0]}")
    if not server.started:
        raise AlbertRefError(f"the server could not start on {args.host}:{args.port} (see the message above)")
