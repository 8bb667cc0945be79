"""The first `albert-ref embed "hello world"` on an empty Numba cache, with and without the
compile helpers (albert_ref/compile_helper.py; ALBERT_REF_COMPILE_HELPERS=0 for "without"), runs alternating, each in a new process
with a fresh NUMBA_CACHE_DIR (also its working directory, so that the albert_ref of this
interpreter is imported, not a source tree in the current directory); then the warm run
(same cache) after each cold one.

Wall seconds from process start to exit; CPU seconds and peak RSS from wait4 (as
/usr/bin/time reports them: CPU counts the helpers too, which the CLI reaps; RSS is the
largest single process). Prints one line per run and the medians.

    python benchmarks/bench_cold_start.py --runs 3
    python benchmarks/bench_cold_start.py --runs 3 -- embed --model M.h5 "some text"
    python benchmarks/bench_cold_start.py --runs 2 --xlarge 1x128   # `run` on the xlarge shape

--xlarge BxS runs `albert-ref run` on a model file of the TF-Hub albert_xlarge/2 shape
(random weights, written once to ~/.cache/albert-ref-bench) and B x S random ids: the warm
run is then the warm xlarge start of issue 11, and the cold one the peak RSS of a pass on a
cold cache.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# The console script; the "without" arm switches the compile helpers off (the only difference).
_CLI = "import sys; from albert_ref import cli; sys.exit(cli.console_main())"


def _run(arm, argv, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, ALBERT_REF_COMPILE_HELPERS="0" if arm == "without" else "1")
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _CLI, *argv], env=env, cwd=cache, stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{arm}: exit {proc.returncode}\n{err.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


FOLDER = os.path.expanduser("~/.cache/albert-ref-bench")


def xlarge_file() -> str:
    """A model file of the module card's xlarge shape with random weights, written to FOLDER
    when missing (delete it after a change of the file format)."""
    from bench_forward import model_fields
    from albert_ref.config import AlbertConfig
    from albert_ref.weights.model_file import write_model
    from albert_ref.weights.random_model import random_model_file
    os.makedirs(FOLDER, exist_ok=True)
    model = os.path.join(FOLDER, "xlarge.h5")
    if not os.path.exists(model):
        write_model(model, random_model_file(AlbertConfig(**model_fields("xlarge"))))
    return model


def _xlarge_command(batch: int, seq: int) -> list[str]:
    """`run` on xlarge_file() and B x S ids."""
    import numpy as np

    from bench_forward import inputs, model_fields
    model, ids = xlarge_file(), os.path.join(FOLDER, f"ids_{batch}x{seq}.npz")
    input_ids, mask, segs = inputs(batch, seq, model_fields("xlarge")["vocab_size"])
    np.savez(ids, input_ids=input_ids, input_mask=mask, segment_ids=segs)
    return ["run", model, "--inputs", ids, "--output", os.path.join(FOLDER, "out.npz")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="cold runs per arm (default 3)")
    p.add_argument("--xlarge", metavar="BxS", help="run the xlarge shape on B x S ids instead of the command")
    p.add_argument("cli", nargs="*", default=["embed", "hello world"], help="the albert-ref command")
    args = p.parse_args(argv)
    if args.xlarge:
        args.cli = _xlarge_command(*map(int, args.xlarge.split("x")))
    from albert_ref.kernels import isa
    import numba
    print(f"{isa.describe(isa.select())}; Python {sys.version.split()[0]}, numba {numba.__version__}; "
          f"albert-ref {' '.join(args.cli)}")
    results = {}
    for i in range(args.runs):
        for arm in ("without", "with"):
            cache = tempfile.mkdtemp(prefix="albert-ref-cold-")
            try:
                for kind in ("cold", "warm"):
                    r = _run(arm, args.cli, cache)
                    results.setdefault((arm, kind), []).append(r)
                    print(f"run {i + 1} {arm:>7} helper, {kind}: {r[0]:.2f} s wall, {r[1]:.2f} s CPU, "
                          f"peak RSS {r[2]:.0f} MB", flush=True)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    print("medians:")
    for (arm, kind), rs in results.items():
        wall, cpu, rss = (statistics.median(x) for x in zip(*rs))
        print(f"  {kind} {arm:>7} helper: {wall:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MB "
              f"(walls {', '.join(f'{r[0]:.2f}' for r in rs)})")


if __name__ == "__main__":
    main()
