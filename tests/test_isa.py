"""Kernel variants (kernels/isa.py): which one is chosen, the override and its errors, and
the committed golden digests on every variant and on every x86 CPU target this host can
execute (each compiled by Numba for that CPU in a fresh process)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import llvmlite.binding as ll
import numpy as np
import pytest

import albert_ref
from albert_ref.errors import IsaError
from albert_ref.kernel_backend import KernelOps
from albert_ref.kernels import isa
from albert_ref.testing import check_golden
from albert_ref.weights import DEMO_MODEL

GOLDEN = Path(__file__).parent / "goldens" / "demo.json"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(isa.ENV, raising=False)


@pytest.mark.parametrize("bits, fma, variants", [(512, True, ("avx512", "avx2", "sse")), (256, True, ("avx2", "sse")),
                                                 (256, False, ("sse",)), (128, True, ("sse",)), (128, False, ("sse",))])
def test_target_runs_variants_no_wider_than_its_vectors(bits, fma, variants):
    assert isa.Target("cpu", bits, fma).variants == variants


@pytest.mark.parametrize("triple, cpu, want", [
    ("aarch64-unknown-linux-gnu", "generic", isa.Target("generic", 128, True)),          # what qemu-aarch64 shows
    ("aarch64-unknown-linux-gnu", "neoverse-v1", isa.Target("neoverse-v1", 128, True)),  # Graviton 3 (SVE: not used)
    ("arm64-apple-macosx", "apple-m1", isa.Target("apple-m1", 128, True)),
    ("x86_64-unknown-linux-gnu", "x86-64", isa.Target("x86-64", 128, False)),
    ("x86_64-unknown-linux-gnu", "haswell", isa.Target("haswell", 256, True)),
    ("x86_64-unknown-linux-gnu", "skylake-avx512", isa.Target("skylake-avx512", 512, True)),
])
def test_probe_reads_each_architectures_vectors(triple, cpu, want):
    """Arm64 (NEON) runs the 128-bit variant, as benchmarks/arm64_check.sh checks under
    emulation; the probe is LLVM's own code generation for that target, on any host."""
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    assert isa.probe(triple, cpu, "") == want


def test_default_is_the_widest_variant_the_target_runs(no_env):
    assert isa.select() == isa.VARIANTS[isa.target().variants[0]]
    assert KernelOps(True).isa == isa.select()
    assert KernelOps(False).isa is None


def test_every_variant_fits_its_registers():
    # accumulators + vectors of B + the broadcast of A within 16 registers (32 for avx512)
    for v in isa.VARIANTS.values():
        assert v.nr % v.vw == 0
        assert v.mr * v.nr // v.vw + v.nr // v.vw + 1 <= (32 if v.bits == 512 else 16), v.name


def test_override_argument_then_environment(monkeypatch):
    monkeypatch.setenv(isa.ENV, "sse")
    assert KernelOps(True).isa.name == "sse"
    assert KernelOps(True, isa=isa.target().variants[0]).isa.name == isa.target().variants[0]
    monkeypatch.setenv(isa.ENV, "")
    assert KernelOps(True).isa == isa.select()


def test_unknown_variant_is_a_named_error(monkeypatch):
    with pytest.raises(IsaError, match=r"unknown isa 'avx1024'; choose one of avx512, avx2, sse"):
        KernelOps(True, isa="avx1024")
    monkeypatch.setenv(isa.ENV, "neon!")
    with pytest.raises(IsaError, match=f"unknown {isa.ENV} 'neon!'"):
        albert_ref.load(DEMO_MODEL)


def test_variant_wider_than_the_cpu_is_a_named_error(monkeypatch, no_env):
    monkeypatch.setattr(isa, "target", lambda: isa.Target("haswell", 256, True))
    with pytest.raises(IsaError, match=r"isa 'avx512' needs 512-bit FMA vectors, but Numba compiles for haswell "
                                       r"\(256-bit vectors\); this CPU runs: avx2, sse"):
        isa.select("avx512")
    assert isa.select().name == "avx2"


def test_isa_belongs_to_the_cpu_backend():
    for backend in ("reference", "numpy"):
        with pytest.raises(IsaError, match=f"backend '{backend}' has none"):
            albert_ref.load(DEMO_MODEL, backend=backend, isa="sse")
    with pytest.raises(IsaError):
        KernelOps(False, isa="sse")


def test_panels_follow_the_variant_and_are_not_mixed():
    w = np.ones((5, 20), np.float32)
    sse, other = KernelOps(True, isa="sse"), KernelOps(True, isa=isa.target().variants[0])
    packed = sse.prepare("a/kernel", w)
    assert packed.panels.shape == (2, 5, isa.VARIANTS["sse"].nr)
    if other.isa != sse.isa:
        with pytest.raises(ValueError, match="packed for isa 'sse'"):
            other.dense(np.ones((2, 5), np.float32), packed, np.zeros(20, np.float32))


@pytest.mark.parametrize("variant", list(isa.VARIANTS))
def test_committed_golden_on_every_variant(variant, monkeypatch):
    if variant not in isa.target().variants:
        pytest.skip(f"{isa.target().cpu} does not run {variant}")
    monkeypatch.setenv(isa.ENV, variant)
    model = albert_ref.load(DEMO_MODEL)
    assert model.ops.isa.name == variant
    report = check_golden(GOLDEN, model)
    assert report.ok, str(report)


# --- other CPU targets, each in a fresh process --------------------------------------------------

# LLVM CPU name: (host features its code may use, the variant it must choose)
X86_TARGETS = {
    "generic": ((), "sse"),
    "haswell": (("avx", "avx2", "fma", "bmi", "bmi2", "lzcnt", "movbe", "f16c", "popcnt"), "avx2"),
    "skylake-avx512": (("avx", "avx2", "fma", "bmi", "bmi2", "lzcnt", "movbe", "f16c", "popcnt",
                        "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"), "avx512"),
}

_CHECK = ("import sys; from albert_ref.kernels import isa; from albert_ref.cli import main; "
          "print('variant', isa.select().name, isa.target()); sys.exit(main(['golden', '--check', sys.argv[1]]))")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPU targets")
def test_committed_golden_on_every_x86_target_this_host_executes(tmp_path):
    """`albert-ref golden --check` compiled by Numba for each CPU target in a fresh process
    (NUMBA_CPU_NAME, with that CPU's own features), all at once; the host itself is
    test_committed_golden_on_every_variant."""
    host = ll.get_host_cpu_features()
    runnable = {name: want for name, (needs, want) in X86_TARGETS.items() if all(host.get(f) for f in needs)}
    assert "generic" in runnable
    procs = {}
    t0 = time.perf_counter()
    for name in runnable:
        env = dict(os.environ, NUMBA_CPU_NAME=name, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path / name))
        env.pop(isa.ENV, None)
        procs[name] = subprocess.Popen([sys.executable, "-c", _CHECK, str(GOLDEN)], env=env, cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out[-3000:]}"
        assert f"variant {runnable[name]} " in out and "OK: 7 digests match" in out, f"{name}:\n{out[-3000:]}"
    print(f"{', '.join(runnable)}: {time.perf_counter() - t0:.0f} s")
