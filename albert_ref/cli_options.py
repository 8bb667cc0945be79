"""Command-line options that several `albert-ref` subcommands share (a leaf module, so that
cli.py and the subcommands it assembles import it without importing each other)."""
from __future__ import annotations

from albert_ref.ops import BACKENDS


def add_backend_options(p, backends=BACKENDS):
    """--backend (one of `backends`), --threads, and --dtype where the numpy backend is offered."""
    p.add_argument("--backend", default="cpu", choices=backends)
    if "numpy" in backends:
        p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                       help="numpy backend only (default float64); kernel backends are float32")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: NUMBA_NUM_THREADS or all cores)")
