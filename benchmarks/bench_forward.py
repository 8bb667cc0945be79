"""Whole forward pass (TF-Hub albert_xlarge/2 module-card config, or --model base for ALBERT
base v2, random weights): albert-ref's "cpu" backend, optionally against Hugging Face
transformers on PyTorch eager and ONNX Runtime, in the same run.

Every engine and case runs in its own subprocess, so that peak RSS is that case's alone.
Reported: median seconds over --reps timed runs (after one warm-up), GFLOP/s (2*M*N*K over
every matrix product, attention scores and context included), peak RSS; and for albert-ref
the time to first output in a fresh process with an empty Numba cache (cold compile) and
in a second process reusing that cache (warm start).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_forward.py --peers
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_forward.py --peers --model base --cases 32x128

--isa picks albert-ref's kernel variant. An AVX2 machine, approximated on an AVX-512 one
(every engine held to AVX2: Numba compiles for Haswell with Haswell's own features,
PyTorch's, MKL's, oneDNN's and OpenBLAS's dispatchers are capped at AVX2):

    env -u OPENBLAS_L2_SIZE NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= ATEN_CPU_CAPABILITY=avx2 \
        MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell \
        python benchmarks/bench_forward.py --peers
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODEL_NAMES = ("xlarge", "base")


def model_fields(name: str) -> dict:
    """AlbertConfig fields of a benchmark model: "xlarge", the module card's
    (albert_ref.config.ALBERT_XLARGE_2), or "base", ALBERT base v2's shape. It imports
    albert_ref: a worker calls it after its import has been timed."""
    from albert_ref.config import ALBERT_XLARGE_2, AlbertConfig
    fields = AlbertConfig.from_original(ALBERT_XLARGE_2).to_dict()
    if name == "base":
        fields.update(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    return fields


def gflop(cfg, B, S):
    T = B * S
    E, H, I = cfg["embedding_size"], cfg["hidden_size"], cfg["intermediate_size"]
    layer = 2 * T * (4 * H * H + 2 * H * I) + 2 * 2 * B * S * S * H
    return (2 * T * E * H + cfg["num_hidden_layers"] * layer + 2 * B * H * H) / 1e9


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(B, S, vocab, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    segs = np.zeros((B, S), np.int32)
    segs[:, S // 2:] = 1
    return ids, mask, segs


def random_tensors(config, seed=0):
    """(name, float32 array) for every encoder tensor, with weights.random_model's
    statistics but drawn directly in float32, one at a time: an xlarge model never
    exists twice (or in float64) in memory."""
    import numpy as np

    from albert_ref.weights.names import encoder_shapes
    rng = np.random.default_rng(seed)
    for name, shape in sorted(encoder_shapes(config).items()):
        if name.endswith("gamma"):
            a = 1 + 0.3 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith(("beta", "bias")):
            a = 0.2 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("embeddings"):
            a = rng.standard_normal(shape, dtype=np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(1.5 / np.sqrt(shape[0]))
        yield name, a


def build_params(ops, config, seed=0):
    """random_tensors prepared one by one, so that only the prepared copies stay alive."""
    return {name: ops.prepare(name, a) for name, a in random_tensors(config, seed)}


def setup_ours(model, threads, batch, seq, isa=None):
    """(config, cpu backend, its prepared random weights, (ids, mask, segs)) for a forward pass."""
    from albert_ref.config import AlbertConfig
    from albert_ref.kernel_backend import KernelOps
    from albert_ref.memory import limit_heap_retention
    config = AlbertConfig(**model_fields(model))
    limit_heap_retention()  # as the CLI does
    ops = KernelOps(True, threads=threads, isa=isa)
    return config, ops, build_params(ops, config), inputs(batch, seq, config.vocab_size)


def worker_ours(args):
    t0 = time.perf_counter()
    import numpy as np

    from albert_ref import forward
    import albert_ref.kernel_backend  # noqa: F401 (timed as an import)
    t_import = time.perf_counter() - t0
    config, ops, params, (ids, mask, segs) = setup_ours(args.model, args.threads, args.batch, args.seq, args.isa)
    t_params = time.perf_counter() - t0 - t_import
    times = []
    for i in range(args.reps + 1):
        t = time.perf_counter()
        out = forward.forward(ops, params, config, ids, mask, segs)
        times.append(time.perf_counter() - t)
        if i == 0:
            first_output = time.perf_counter() - t0
    seq = out["sequence_output"]
    return dict(engine=f"albert-ref cpu ({ops.isa.name})", times=times[1:], first_call=times[0], import_s=t_import, params_s=t_params,
                first_output_s=first_output, rss_mb=peak_rss_mb(),
                checksum=float(np.abs(seq).astype(np.float64).sum()), finite=bool(np.isfinite(seq).all()))


def _hf_model(threads, model):
    import torch
    from transformers import AlbertConfig as HFConfig
    from transformers import AlbertModel
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = {k: v for k, v in model_fields(model).items() if k != "project_embeddings"}
    c["hidden_act"] = "gelu_new"  # HF's name for the original "gelu"
    cfg = HFConfig(**c, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return AlbertModel(cfg, add_pooling_layer=True).eval()


def worker_torch(args):
    import torch
    model = _hf_model(args.threads, args.model)
    ids, mask, segs = (torch.from_numpy(a.astype("int64")) for a in inputs(args.batch, args.seq, model_fields(args.model)["vocab_size"]))
    times = []
    with torch.inference_mode():
        for _ in range(args.reps + 1):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, token_type_ids=segs)
            times.append(time.perf_counter() - t)
    return dict(engine=f"PyTorch {torch.__version__} eager (transformers AlbertModel)", times=times[1:],
                first_call=times[0], rss_mb=peak_rss_mb())


def worker_ort_export(args):
    import torch
    model = _hf_model(args.threads, args.model)
    ids, mask, segs = (torch.from_numpy(a.astype("int64")) for a in inputs(1, args.seq, model_fields(args.model)["vocab_size"]))
    torch.onnx.export(model, (ids, mask, segs), args.onnx, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["sequence_output", "pooled_output"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "b", 1: "s"} for n in ("input_ids", "attention_mask", "token_type_ids")})
    return dict(engine="export", times=[0.0], rss_mb=peak_rss_mb())


def worker_ort(args):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    ids, mask, segs = (a.astype("int64") for a in inputs(args.batch, args.seq, model_fields(args.model)["vocab_size"]))
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segs}
    times = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return dict(engine=f"ONNX Runtime {ort.__version__} (plain export)", times=times[1:], first_call=times[0],
                rss_mb=peak_rss_mb())


def worker_accuracy(args):
    """2 sequences (128 and 77 real tokens): albert-ref cpu and NumPy float32
    (OpenBLAS) against the NumPy float64 forward on the same float32 weights."""
    import numpy as np

    from albert_ref import forward
    from albert_ref.numpy_backend import NumpyOps
    from albert_ref.config import AlbertConfig
    from albert_ref.kernel_backend import KernelOps
    config = AlbertConfig(**model_fields(args.model))
    ids, mask, segs = inputs(2, args.seq, config.vocab_size, seed=1)
    mask[1, 77:] = 0
    ids[1, 77:] = 0
    raw = build_params(NumpyOps("float32"), config)
    outs = {}
    for name, ops in (("cpu", KernelOps(True, threads=args.threads)), ("numpy32", NumpyOps("float32")),
                      ("numpy64", NumpyOps("float64"))):
        params = {k: ops.prepare(k, v) for k, v in raw.items()}
        outs[name] = forward.forward(ops, params, config, ids, mask, segs)
        del params
    real = mask.astype(bool)
    res = {}
    for name in ("cpu", "numpy32"):
        for key in ("sequence_output", "pooled_output"):
            a, b = outs[name][key], outs["numpy64"][key]
            if key == "sequence_output":
                a, b = a[real], b[real]
            d = np.abs(a.astype(np.float64) - b)
            res[f"{name} {key}"] = dict(max_abs=float(d.max()), rms=float(np.sqrt(np.mean(d * d))),
                                        max_rel=float((d / np.maximum(np.abs(b), 1e-3)).max()),
                                        magnitude=float(np.abs(b).max()))
    return dict(engine="accuracy", times=[0.0], rss_mb=peak_rss_mb(), errors=res)


WORKERS = {"accuracy": worker_accuracy, "ours": worker_ours, "torch": worker_torch, "ort": worker_ort, "ort_export": worker_ort_export}


def spawn(kind, batch, seq, threads, reps, env=None, onnx="", model="xlarge", isa=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--batch", str(batch), "--seq", str(seq),
           "--threads", str(threads), "--reps", str(reps), "--onnx", onnx, "--model", model] + (["--isa", isa] if isa else [])
    e = dict(os.environ, **(env or {}))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        e[var] = str(threads)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=e, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        print(f"  [{kind} {batch}x{seq} failed]\n{p.stderr[-2000:]}", file=sys.stderr)
        return None
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = wall
    return r


def report(r, batch, seq, model):
    import statistics
    med = statistics.median(r["times"])
    gf = gflop(model_fields(model), batch, seq)
    print(f"  {r['engine']:<52s} {batch}x{seq}: median {med:7.3f} s  (runs {', '.join(f'{t:.2f}' for t in r['times'])})"
          f"  {gf / med:6.1f} GFLOP/s  peak RSS {r['rss_mb']:6.0f} MB", flush=True)
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODEL_NAMES, default="xlarge")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=["1x128", "8x128"])
    ap.add_argument("--peers", action="store_true", help="also time PyTorch eager (and ONNX Runtime if installed)")
    ap.add_argument("--no-compile", action="store_true", help="skip the cold/warm start measurement")
    ap.add_argument("--accuracy", action="store_true", help="only: errors vs the float64 NumPy forward")
    ap.add_argument("--isa", default=None, help="kernel variant (avx512, avx2, sse; default: chosen for this CPU)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    import platform

    import numba
    import numpy as np
    print(f"{args.model} forward, {args.threads} threads; python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    from albert_ref.kernels import isa
    print("  " + isa.describe(isa.select(args.isa)))
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ and (var, os.environ[var]) != ("OPENBLAS_CORETYPE", "Haswell"):
            print(f"  warning: {var} is set", file=sys.stderr)
    if args.accuracy:
        r = spawn("accuracy", 2, 128, args.threads, 0, model=args.model)
        for name, e in r["errors"].items():
            print(f"  {name:28s} vs float64: max abs {e['max_abs']:.3e}  rms {e['rms']:.3e}  "
                  f"(output magnitude {e['magnitude']:.2f})")
        return
    gf = {c: gflop(model_fields(args.model), *map(int, c.split("x"))) for c in args.cases}
    print("  GFLOP per forward: " + ", ".join(f"{c}: {g:.0f}" for c, g in gf.items()))
    if not args.no_compile:
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            for label in ("cold (empty Numba cache)", "warm (cache from the previous process)"):
                r = spawn("ours", 1, 128, args.threads, 1, env, model=args.model, isa=args.isa)
                if r:
                    print(f"  start, {label}: first output {r['first_output_s']:.1f} s after process start "
                          f"(imports {r['import_s']:.1f} s, random weights + packing {r['params_s']:.1f} s, first "
                          f"forward {r['first_call']:.1f} s vs {r['times'][0]:.2f} s steady: "
                          f"compile/load ~{r['first_call'] - r['times'][0]:.1f} s)", flush=True)
    results = {}
    onnx_path = None
    tmp = tempfile.TemporaryDirectory()
    if args.peers:
        try:
            import onnxruntime  # noqa: F401
            onnx_path = os.path.join(tmp.name, f"albert_{args.model}.onnx")
            if not spawn("ort_export", 1, 128, args.threads, 0, onnx=onnx_path, model=args.model):
                onnx_path = None
        except ImportError:
            print("  (onnxruntime not installed: skipped)")
    for case in args.cases:
        B, S = map(int, case.split("x"))
        r = spawn("ours", B, S, args.threads, args.reps, model=args.model, isa=args.isa)
        results[("ours", case)] = report(r, B, S, args.model) if r else None
        if args.peers:
            r = spawn("torch", B, S, args.threads, args.reps, model=args.model)
            results[("torch", case)] = report(r, B, S, args.model) if r else None
            if onnx_path:
                r = spawn("ort", B, S, args.threads, args.reps, onnx=onnx_path, model=args.model)
                results[("ort", case)] = report(r, B, S, args.model) if r else None
        for peer in ("torch", "ort"):
            if results.get(("ours", case)) and results.get((peer, case)):
                print(f"  {case}: albert-ref is {results[(peer, case)] / results[('ours', case)]:.2f}x {peer}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
