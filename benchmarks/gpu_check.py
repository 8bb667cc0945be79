"""One-shot check of the "cuda" backend on a GPU machine (well under 10 minutes on an H100).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py [--out DIR] [--quick]

Stages (each in its own try/except: a failure is reported and the next stage runs):
  setup     make `albert_ref` importable (pip install -e . --no-deps, else an import shim),
            report versions, the GPU, and the kernels' registers / spills / shared memory
  conformance  the conformance suite's cuda rows on the GPU (tests/test_conformance.py -k cuda:
            every op case and tiny model, three tilings, bit equality with the reference; the
            device math; GPU-sized shapes against the cpu kernels) and tests/test_cuda_ptx.py
  xlarge    bit equality cuda == cpu (the fast CPU kernels, bit-identical to the reference)
            on the TF-Hub albert_xlarge/2 config with random weights: 8 x 128 all real, and
            8 x 128 padded with mixed lengths (real positions); plus the padded sequence
            alone == in the batch, on the GPU
  gemm      the dense kernel alone at xlarge FFN shapes for several tilings (TFLOP/s,
            bits equal across tilings) against torch.matmul float32 (TF32 off)
  profile   one xlarge forward at 32 x 128, time per op kind
  timing    xlarge forward at batch 8, 32, 128 x 128: albert-ref cuda vs PyTorch float32
            (Hugging Face AlbertModel if transformers imports, else a plain PyTorch ALBERT),
            TF32 off and on
Writes $OUT (or --out) /gpu_check.log and /gpu_check.json; prints a short table last.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()
DEADLINE_S = 540            # stop starting heavy stages after this many seconds
RESULTS = {"stages": {}}
LOG = None



def _xlarge_config():
    """The target model's shape (albert_ref.config.ALBERT_XLARGE_2, the module card's)."""
    from albert_ref.config import ALBERT_XLARGE_2, AlbertConfig
    return AlbertConfig.from_original(ALBERT_XLARGE_2)


def log(*args):
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def elapsed():
    return time.perf_counter() - T0


def stage(name):
    def wrap(fn):
        def run(*a, **kw):
            log(f"\n=== {name} ({elapsed():.0f} s) ===")
            t = time.perf_counter()
            try:
                res = fn(*a, **kw)
                RESULTS["stages"][name] = {"ok": True, "seconds": round(time.perf_counter() - t, 1), **(res or {})}
            except Exception as e:  # report and go on
                log(traceback.format_exc())
                RESULTS["stages"][name] = {"ok": False, "seconds": round(time.perf_counter() - t, 1),
                                           "error": f"{type(e).__name__}: {e}"[:500]}
            log(f"--- {name}: {'ok' if RESULTS['stages'][name]['ok'] else 'FAILED'} "
                f"({RESULTS['stages'][name]['seconds']} s)")
            return RESULTS["stages"][name]
        return run
    return wrap


# --- setup -------------------------------------------------------------------------------------

def _shim_import():
    """albert_ref from the source tree without installing: map albert_ref.kernels and
    albert_ref.weights onto kernels/ and weights/ as pyproject's package-dir does."""
    if "albert_ref" in sys.modules:
        return

    def make(name, init, where):
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(where)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        return spec, mod

    top = make("albert_ref", REPO / "albert_ref" / "__init__.py", REPO / "albert_ref")
    subs = [make(f"albert_ref.{sub}", REPO / sub / "__init__.py", REPO / sub) for sub in ("kernels", "weights")]
    for (spec, mod), sub in zip(subs, ("kernels", "weights")):
        setattr(top[1], sub, mod)
        spec.loader.exec_module(mod)
    top[0].loader.exec_module(top[1])


@stage("setup")
def setup():
    info = {"python": sys.version.split()[0], "machine": platform.node()}
    if importlib.util.find_spec("crc32c") is None:   # only the TF-bundle reader needs it
        sys.modules["crc32c"] = None
    installed = False
    try:
        spec = importlib.util.find_spec("albert_ref")
        installed = spec is not None and Path(spec.origin).resolve().parent == REPO / "albert_ref"
    except Exception:
        pass
    if not installed:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO), "--no-deps",
                            "--no-build-isolation"], capture_output=True, text=True)
        log("pip install -e . --no-deps:", "ok" if r.returncode == 0 else f"failed: {r.stderr[-800:]}")
        importlib.invalidate_caches()
        installed = r.returncode == 0
        info["pip_install"] = installed
    try:
        import albert_ref.kernels.cuda_gemm  # noqa: F401
        info["import"] = "installed package"
    except Exception:
        for m in [m for m in sys.modules if m == "albert_ref" or m.startswith("albert_ref.")]:
            del sys.modules[m]
        _shim_import()
        import albert_ref.kernels.cuda_gemm  # noqa: F401
        info["import"] = "source-tree shim"
    log("albert_ref imported via", info["import"])
    for pkg in ("numpy", "numba", "numba_cuda", "llvmlite", "torch", "transformers", "cuda.bindings"):
        try:
            mod = importlib.import_module(pkg)
            info[pkg] = getattr(mod, "__version__", "?")
        except Exception as e:
            info[pkg] = f"missing ({type(e).__name__})"
    from numba import cuda
    from albert_ref.kernels import cuda_fmath
    if cuda_fmath.SIM:  # a rehearsal under the simulator: exact shared arrays (process-wide patch)
        cuda_fmath.lock_simulated_shared_arrays()
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else name
    info.update(gpu=name, compute_capability=list(getattr(dev, "compute_capability", ())),
                multiprocessors=getattr(dev, "MULTIPROCESSOR_COUNT", None))
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except Exception:
        pass
    for k, v in info.items():
        log(f"  {k}: {v}")
    RESULTS["device"] = name
    # the kernels as compiled for this GPU: registers, spills, shared memory
    import numpy as np

    from albert_ref.cuda_backend import CudaOps
    ops = CudaOps()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((130, 300)).astype(np.float32)
    w = rng.standard_normal((300, 260)).astype(np.float32)
    b = np.zeros(260, np.float32)
    for act in (None, "gelu_tanh"):
        np.asarray(ops.dense(x, w, b, act))
    from albert_ref.kernels import cuda_gemm
    kernels = {}
    for act in (0, 1):
        disp = cuda_gemm.dense_kernel(act, cuda_gemm.DEFAULT_TILE)
        for kernel in list(disp.overloads.values()):
            try:
                kernels[f"dense act{act} {cuda_gemm.DEFAULT_TILE}"] = {
                    attr: getattr(kernel, attr, None) for attr in
                    ("regs_per_thread", "local_mem_per_thread", "shared_mem_per_block", "max_threads_per_block")}
            except Exception as e:
                kernels[f"dense act{act}"] = str(e)
    for k, v in kernels.items():
        log(f"  {k}: {v}")
    info["kernels"] = kernels
    return info


# --- bit equality ----------------------------------------------------------------------------------

def _bits_report(got, want):
    import numpy as np
    got = np.ascontiguousarray(got, np.float32)
    want = np.ascontiguousarray(want, np.float32)
    if got.shape != want.shape:
        return {"equal": False, "shape": [list(got.shape), list(want.shape)]}
    gi, wi = got.view(np.int32).astype(np.int64), want.view(np.int32).astype(np.int64)
    diff = gi != wi
    both_nan = np.isnan(got) & np.isnan(want)
    diff &= ~both_nan
    n = int(diff.sum())
    res = {"equal": n == 0, "differ": n, "of": int(diff.size)}
    if n:
        # ulp distance on the monotone integer line of floats
        mono = lambda a: np.where(a < 0, -(a & 0x7FFFFFFF), a)
        res["max_ulp"] = int(np.abs(mono(gi) - mono(wi))[diff].max())
        res["max_abs"] = float(np.abs(got.astype(np.float64) - want)[diff].max())
        res["first"] = [int(i) for i in np.argwhere(diff)[0]]
    return res


def _forward(ops, raw, config, ids, mask, segs):
    import numpy as np

    from albert_ref import forward
    from albert_ref.ops import prepare_params
    out = forward.forward(ops, prepare_params(ops, raw), config, ids, mask, segs)
    return {k: np.asarray(v) for k, v in out.items()}


def _xlarge_params(config, seed=0):
    """Random weights with benchmarks/bench_forward.py's statistics (its random_tensors)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_forward import random_tensors
    return dict(random_tensors(config, seed))


def _xlarge_inputs(B, S, lengths=None, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, _xlarge_config().vocab_size, (B, S)).astype(np.int32)
    segs = np.zeros((B, S), np.int32)
    segs[:, S // 2:] = 1
    mask = np.ones((B, S), np.int32)
    if lengths is not None:
        mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
        ids = np.where(mask == 1, ids, 0).astype(np.int32)
        segs = np.where(mask == 1, segs, 0).astype(np.int32)
    return ids, mask, segs


@stage("xlarge")
def xlarge():
    from albert_ref.cuda_backend import CudaOps
    from albert_ref.kernel_backend import KernelOps
    config = _xlarge_config()
    raw = _xlarge_params(config)
    cuda_ops, cpu = CudaOps(), KernelOps(True)
    res = {}
    lengths = [128, 1, 77, 0, 100, 5, 128, 64]
    for case, inputs in (("8x128", _xlarge_inputs(8, 128)), ("8x128 padded", _xlarge_inputs(8, 128, lengths, 1))):
        ids, mask, segs = inputs
        t = time.perf_counter()
        got = _forward(cuda_ops, raw, config, ids, mask, segs)
        t_gpu = time.perf_counter() - t
        t = time.perf_counter()
        want = _forward(cpu, raw, config, ids, mask, segs)
        t_cpu = time.perf_counter() - t
        real = mask.astype(bool) | ~mask.any(axis=1, keepdims=True)
        rep = {"sequence_output (real positions)": _bits_report(got["sequence_output"][real], want["sequence_output"][real]),
               "sequence_output (all)": _bits_report(got["sequence_output"], want["sequence_output"]),
               "pooled_output": _bits_report(got["pooled_output"], want["pooled_output"])}
        eq = all(r["equal"] for r in rep.values())
        res[case] = {"equal": eq, "gpu_s_first_call": round(t_gpu, 2), "cpu_s": round(t_cpu, 2), **rep}
        log(f"  {case}: {'bit-identical' if eq else 'DIFFERENT'} (gpu first call {t_gpu:.1f} s incl. compile, "
            f"cpu {t_cpu:.1f} s)")
        for k, v in rep.items():
            log(f"     {k}: {v}")
        if case == "8x128 padded":   # the 77-token sequence alone, unpadded, on the GPU
            one = _forward(cuda_ops, raw, config, ids[2:3, :77], mask[2:3, :77], segs[2:3, :77])
            alone = _bits_report(one["sequence_output"][0], got["sequence_output"][2, :77])
            alone_pooled = _bits_report(one["pooled_output"], got["pooled_output"][2:3])
            res[case]["alone_equals_batched"] = alone["equal"] and alone_pooled["equal"]
            log(f"     sequence 2 alone (77 tokens) == in the padded batch: {res[case]['alone_equals_batched']}")
    return {"equal": all(r["equal"] for r in res.values()), "cases": res}


@stage("conformance")
def conformance(out_dir):
    cmd = [sys.executable, "-m", "pytest", "tests/test_conformance.py", "tests/test_cuda_ptx.py", "-q", "-rs",
           "-p", "no:cacheprovider", "-k", "cuda and not under_simulator", "-o", "addopts="]
    env = dict(os.environ)
    if RESULTS["stages"].get("setup", {}).get("import") == "source-tree shim":
        log("  (albert_ref is not installed: running the tests through the import shim)")
        cmd = [sys.executable, "-c", "import sys, runpy; sys.path.insert(0, 'benchmarks'); import gpu_check as g; "
               "g._shim_import(); import pytest; sys.exit(pytest.main(sys.argv[1:]))"] + cmd[3:]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=420)
    (out_dir / "gpu_tests.log").write_text(r.stdout + "\n" + r.stderr)
    tail = r.stdout.strip().splitlines()[-15:]
    for line in tail:
        log("  " + line)
    if r.returncode != 0:
        raise RuntimeError(f"pytest exit status {r.returncode} (see gpu_tests.log)")
    return {"summary": tail[-1] if tail else ""}


# --- speed -------------------------------------------------------------------------------------------

def _sync():
    from numba import cuda
    cuda.synchronize()


@stage("gemm")
def gemm_sweep():
    import numpy as np

    from albert_ref.kernels import cuda_gemm
    from numba import cuda
    M, K, N = 4096, 2048, 8192         # 32 x 128 tokens, the FFN's first product
    rng = np.random.default_rng(0)
    x = cuda.to_device(rng.standard_normal((M, K), dtype=np.float32))
    w = cuda.to_device((rng.standard_normal((K, N), dtype=np.float32) / np.float32(45)))
    b = cuda.to_device(np.zeros(N, np.float32))
    flop = 2.0 * M * N * K
    res, first = {}, None
    for tile in [cuda_gemm.DEFAULT_TILE, (16, 8, 8), (8, 16, 16), (16, 8, 16), (8, 8, 8)]:
        try:
            out = cuda.device_array((M, N), np.float32)
            cuda_gemm.launch_dense(x, w, b, out, "gelu_tanh", tile=tile)
            _sync()
            reps, t = 5, time.perf_counter()
            for _ in range(reps):
                cuda_gemm.launch_dense(x, w, b, out, "gelu_tanh", tile=tile)
            _sync()
            dt = (time.perf_counter() - t) / reps
            host = out.copy_to_host()
            if first is None:
                first = host
            same = bool(np.array_equal(host.view(np.uint32), first.view(np.uint32)))
            res[str(tile)] = {"ms": round(dt * 1e3, 2), "tflops": round(flop / dt / 1e12, 2), "bits_equal_default": same}
            log(f"  tile {tile}: {dt * 1e3:.2f} ms, {flop / dt / 1e12:.2f} TFLOP/s, bits == default tile: {same}")
        except Exception as e:
            res[str(tile)] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"  tile {tile}: {type(e).__name__}: {e}")
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        tx = torch.randn(M, K, device="cuda")
        tw = torch.randn(K, N, device="cuda")
        torch.matmul(tx, tw)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            torch.matmul(tx, tw)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 5
        res["torch.matmul fp32"] = {"ms": round(dt * 1e3, 2), "tflops": round(flop / dt / 1e12, 2)}
        log(f"  torch.matmul float32 (TF32 off): {dt * 1e3:.2f} ms, {flop / dt / 1e12:.2f} TFLOP/s")
    except Exception as e:
        log(f"  torch.matmul: {type(e).__name__}: {e}")
    return {"tiles": res}


@stage("profile")
def profile():
    import numpy as np

    from albert_ref.cuda_backend import CudaOps
    from albert_ref.ops import prepare_params
    config = _xlarge_config()
    raw = _xlarge_params(config)
    ops = CudaOps()
    params = prepare_params(ops, raw)
    ids, mask, segs = _xlarge_inputs(32, 128)
    from albert_ref import forward
    np.asarray(forward.forward(ops, params, config, ids, mask, segs)["sequence_output"])   # warm-up
    totals = {}
    for op in ("embed", "layer_norm", "dense", "attention"):
        real = getattr(ops, op)

        def timed(*a, _real=real, _op=op, **kw):
            _sync()
            t = time.perf_counter()
            r = _real(*a, **kw)
            _sync()
            totals[_op] = totals.get(_op, 0.0) + time.perf_counter() - t
            return r
        setattr(ops, op, timed)
    t = time.perf_counter()
    np.asarray(forward.forward(ops, params, config, ids, mask, segs)["sequence_output"])
    total = time.perf_counter() - t
    for op, s in sorted(totals.items(), key=lambda kv: -kv[1]):
        log(f"  {op:10s} {s * 1e3:8.1f} ms  {100 * s / total:5.1f} %")
    log(f"  total      {total * 1e3:8.1f} ms (per-op synchronised)")
    return {"ms": {k: round(v * 1e3, 1) for k, v in totals.items()}, "total_ms": round(total * 1e3, 1)}


def _torch_albert(raw, config):
    """A plain PyTorch float32 ALBERT forward over our weights (TF names, [in, out] kernels)."""
    import torch

    from albert_ref.weights.names import EMB, MAPPING, POOLER, block_prefix
    P = {k: torch.from_numpy(v).cuda() for k, v in raw.items()}
    H, heads = config.hidden_size, config.num_attention_heads
    d = H // heads

    def ln(x, g, b):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), P[g], P[b], eps=config.layer_norm_eps)

    def gelu(x):
        return torch.nn.functional.gelu(x, approximate="tanh")

    def fwd(ids, mask, segs):
        B, S = ids.shape
        x = P[EMB + "word_embeddings"][ids] + P[EMB + "token_type_embeddings"][segs] + P[EMB + "position_embeddings"][:S]
        x = ln(x, EMB + "LayerNorm/gamma", EMB + "LayerNorm/beta")
        x = x @ P[MAPPING + "kernel"] + P[MAPPING + "bias"]
        bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for layer in range(config.num_hidden_layers):
            pre = block_prefix(config.group_of_layer(layer), 0)
            a = pre + "attention_1/"
            q, k, v = ((x @ P[f"{a}self/{n}/kernel"] + P[f"{a}self/{n}/bias"]).view(B, S, heads, d).transpose(1, 2)
                       for n in ("query", "key", "value"))
            s = (q @ k.transpose(-1, -2)) * (1.0 / d ** 0.5) + bias
            ctx = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, S, H)
            x = ln(ctx @ P[a + "output/dense/kernel"] + P[a + "output/dense/bias"] + x, pre + "LayerNorm/gamma",
                   pre + "LayerNorm/beta")
            f = pre + "ffn_1/intermediate/"
            h = gelu(x @ P[f + "dense/kernel"] + P[f + "dense/bias"])
            x = ln(h @ P[f + "output/dense/kernel"] + P[f + "output/dense/bias"] + x, pre + "LayerNorm_1/gamma",
                   pre + "LayerNorm_1/beta")
        pooled = torch.tanh(x[:, 0] @ P[POOLER + "kernel"] + P[POOLER + "bias"])
        return x, pooled
    return fwd


def _hf_albert():
    """bench_forward's transformers AlbertModel of the xlarge shape, on the GPU."""
    import torch
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_forward import _hf_model
    return _hf_model(torch.get_num_threads(), "xlarge").cuda()


def _median_time(fn, reps, budget_s=60.0, sync=None):
    sync = sync or _sync
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if sum(times) > budget_s:
            break
    return sorted(times)[len(times) // 2]


@stage("timing")
def timing(batches):
    import numpy as np
    import torch

    from albert_ref import forward
    from albert_ref.ops import prepare_params
    from albert_ref.cuda_backend import CudaOps
    config = _xlarge_config()
    raw = _xlarge_params(config)
    ops = CudaOps()
    params = prepare_params(ops, raw)
    plain = _torch_albert(raw, config)
    try:
        hf = _hf_albert()
        import transformers
        hf_name = f"transformers {transformers.__version__} AlbertModel"
    except Exception as e:
        hf, hf_name = None, None
        log(f"  transformers AlbertModel unavailable ({type(e).__name__}: {e}); timing the plain PyTorch ALBERT")
    res = {}
    for B in batches:
        if elapsed() > DEADLINE_S:
            log(f"  batch {B}: skipped (time budget)")
            continue
        ids, mask, segs = _xlarge_inputs(B, 128, seed=B)
        ours = lambda: forward.forward(ops, params, config, ids, mask, segs)["sequence_output"]
        t_ours = _median_time(ours, 3 if B < 128 else 2)     # on the device, as torch's below
        tids, tmask, tsegs = (torch.from_numpy(a.astype(np.int64)).cuda() for a in (ids, mask, segs))
        entry = {"albert-ref cuda s": round(t_ours, 4)}
        with torch.inference_mode():
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                if hf is not None:
                    run = lambda: hf(input_ids=tids, attention_mask=tmask, token_type_ids=tsegs)
                else:
                    run = lambda: plain(tids, tmask, tsegs)
                entry[f"torch tf32={'on' if tf32 else 'off'} s"] = round(_median_time(run, 5, sync=torch.cuda.synchronize), 4)
            torch.backends.cuda.matmul.allow_tf32 = False
            if B == 8:   # accuracy of ours vs PyTorch float32 on the same weights (not bits)
                seq_t, _ = plain(tids, tmask, tsegs)
                seq_o = np.asarray(ours())
                entry["max_abs_vs_torch_fp32"] = float(np.abs(seq_t.float().cpu().numpy() - seq_o).max())
        entry["ratio_vs_tf32_off"] = round(t_ours / entry["torch tf32=off s"], 2)
        res[B] = entry
        log(f"  B={B:4d}: {entry}")
    return {"torch_model": hf_name or "plain PyTorch ALBERT (this script)", "batches": res}


def summary_table():
    lines = [f"GPU: {RESULTS.get('device', '?')}   total {elapsed():.0f} s"]
    for name, st in RESULTS["stages"].items():
        extra = ""
        if name == "xlarge" and st.get("ok"):
            extra = "bit-identical" if st.get("equal") else "DIFFERENT"
        elif name == "conformance" and st.get("ok"):
            extra = st.get("summary", "")
        elif not st.get("ok"):
            extra = st.get("error", "")[:100]
        lines.append(f"  {name:11s} {'ok' if st.get('ok') else 'FAIL':4s} {st.get('seconds', 0):6.1f} s  {extra}")
    tm = RESULTS["stages"].get("timing", {})
    if tm.get("ok"):
        lines.append(f"  xlarge x 128 tokens, seconds per forward ({tm.get('torch_model')}):")
        lines.append(f"  {'batch':>5s} {'ours':>8s} {'torch fp32':>10s} {'torch tf32':>10s} {'ours/fp32':>9s}")
        for B, e in tm["batches"].items():
            lines.append(f"  {B:>5} {e['albert-ref cuda s']:8.3f} {e['torch tf32=off s']:10.3f} "
                         f"{e['torch tf32=on s']:10.3f} {e['ratio_vs_tf32_off']:9.2f}")
    gm = RESULTS["stages"].get("gemm", {})
    if gm.get("ok"):
        best = {k: v for k, v in gm["tiles"].items() if "tflops" in v}
        lines.append("  gemm 4096x8192x2048 TFLOP/s: " + ", ".join(f"{k} {v['tflops']}" for k, v in best.items()))
    return "\n".join(lines)


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"))
    ap.add_argument("--quick", action="store_true", help="skip batch 128 and the gemm sweep")
    ap.add_argument("--skip", default="", help="comma-separated stages to skip")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG = open(out / "gpu_check.log", "w")
    skip = set(filter(None, args.skip.split(",")))
    os.chdir(REPO)
    if setup()["ok"]:
        for name, fn, a in (("conformance", conformance, (out,)), ("xlarge", xlarge, ()),
                            ("gemm", gemm_sweep, ()), ("profile", profile, ()),
                            ("timing", timing, ([8, 32] if args.quick else [8, 32, 128],))):
            if name in skip or (args.quick and name == "gemm"):
                continue
            if elapsed() > DEADLINE_S and name != "timing":
                log(f"\n=== {name}: skipped (time budget, {elapsed():.0f} s) ===")
                continue
            fn(*a)
    RESULTS["total_s"] = round(elapsed(), 1)
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    table = summary_table()
    log("\n" + table)
    LOG.close()


if __name__ == "__main__":
    main()
