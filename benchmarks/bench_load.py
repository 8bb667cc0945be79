"""Loading a model file (albert_ref.load: read, verify, pack, the kernels warmed up beside
it) and its first forward pass, each run in a new process with a warm Numba cache (with
--cold, an empty one of its own: `load` then compiles the kernels in the process): seconds
of the import, of `load` (wall and CPU of all its threads), of the first pass, and the peak
RSS after `load` and after the pass. Medians over the runs. `load` imports Numba and the
kernels itself (while the file is hashed), so "import" is NumPy's, h5py's and albert_ref's.

    python benchmarks/bench_load.py                       # the xlarge file, 1 x 128
    python benchmarks/bench_load.py --runs 5 --case 1x6 --model M.h5
    python benchmarks/bench_load.py --case 8x128 --cold --runs 2 [--ffn-rows whole]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# One run: a fresh interpreter, timed from its first line.
_RUN = """
import time; t0 = time.perf_counter()
import json, resource, sys
import numpy as np
from albert_ref import load
if sys.argv[3] != "default":   # the feed-forward's row blocks (KernelOps.ffn_rows)
    from albert_ref.kernel_backend import KernelOps
    KernelOps.ffn_rows = None if sys.argv[3] == "whole" else int(sys.argv[3])
try:
    from albert_ref.memory import limit_heap_retention
except ImportError:   # commits before e02947e had it here: this script measures them too
    from albert_ref.kernel_backend import limit_heap_retention
limit_heap_retention()   # as the CLI does
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t1, c1 = time.perf_counter(), time.process_time()
model = load(sys.argv[1])
t2, c2 = time.perf_counter(), time.process_time()
rss_load = peak()
batch, seq = map(int, sys.argv[2].split("x"))
ids = np.random.default_rng(0).integers(5, model.config.vocab_size, (batch, seq)).astype(np.int32)
model(ids)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "load CPU": c2 - c1, "first pass": t3 - t2,
                  "total": t3 - t0, "RSS after load": rss_load, "RSS after pass": peak()}))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model file (default: the xlarge one of bench_cold_start)")
    p.add_argument("--case", default="1x128", help="B x S of the first pass (default 1x128)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="each run on an empty Numba cache of its own")
    p.add_argument("--ffn-rows", default="default", metavar="N|whole",
                   help="KernelOps.ffn_rows for the pass (default: the backend's own)")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_cold_start import FOLDER, xlarge_file
    model = os.path.abspath(args.model) if args.model else xlarge_file()
    from albert_ref.kernels import isa
    print(f"{isa.describe(isa.select())}; Python {sys.version.split()[0]}; {model}, first pass {args.case}")
    # run in FOLDER, so that the albert_ref of this interpreter is imported, not a source tree here
    command = dict(args=[sys.executable, "-c", _RUN, model, args.case, args.ffn_rows], cwd=FOLDER, check=True,
                   capture_output=True, text=True)
    if not args.cold:
        subprocess.run(**command)   # the first run warms Numba's cache
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache) if args.cold else None
            out = subprocess.run(**command, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" if "RSS" not in k else f"{k} {v:.0f} MB"
                                           for k, v in runs[-1].items()), flush=True)
    print("medians: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.3f}" if "RSS" not in k else
                                  f"{k} {statistics.median(r[k] for r in runs):.0f} MB" for k in runs[0]))


if __name__ == "__main__":
    main()
