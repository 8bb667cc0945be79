#!/usr/bin/env bash
# The committed golden digests (tests/goldens/demo.json) on Arm64, under user-mode emulation.
#
#   benchmarks/arm64_check.sh [smoke|golden|all]     (default: all)
#
# As root (apt-get, dpkg). Sets up, idempotently and from the package registries only (Debian bookworm, PyPI):
#   * qemu-user (apt) for qemu-aarch64;
#   * an arm64 CPython 3.11: Debian's python3.11:arm64 and the arm64 libraries it needs,
#     downloaded with `apt-get download` (after `dpkg --add-architecture arm64`) and unpacked
#     into a sysroot, never installed: the host's own python3 stays untouched;
#   * the aarch64 wheels of albert-ref's dependencies (pyproject.toml's [project] dependencies
#     and, from the host's installed metadata, theirs, markers evaluated for CPython 3.11 on
#     Linux aarch64), pinned to the versions of the host's interpreter (`pip download
#     --platform ..._aarch64`), unpacked with `pip install --target`;
#   * albert-ref itself, built from this checkout (pure Python) into its own target directory.
# Then, under qemu-aarch64 (no binfmt registration needed), holding the benchmark lock:
#   smoke   the smallest proof of the pipeline: numpy, an @njit function, the kernel variant
#           kernels/isa.py selects for the emulated CPU (must be the 128-bit one, "sse");
#   golden  `albert-ref golden --check tests/goldens/demo.json` on the default (cpu) backend,
#           with an empty Numba cache, capped at ARM64_CHECK_TIMEOUT seconds (default 1800).
# Not run by CI (minutes of emulated Numba compiling). Results: benchmarks/RESULTS.md, "Arm64".
#
# Environment: ARM64_CHECK_DIR (default ~/.cache/albert-ref-arm64) holds the sysroot, wheels
# and site directories, which every checkout on the machine shares (set up under a lock);
# albert-ref itself goes into a directory of this run's own, removed at exit, so that runs
# from two checkouts never test each other's code. PYTHON (default .venv/bin/python, else python3) is the host interpreter
# whose pip downloads the wheels and whose package versions are pinned.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ARM64_CHECK_DIR:-$HOME/.cache/albert-ref-arm64}
TIMEOUT=${ARM64_CHECK_TIMEOUT:-1800}
LOCK=/tmp/albert-bench.lock
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
WHAT=${1:-all}
case "$WHAT" in smoke|golden|all) ;; *) echo "usage: $0 [smoke|golden|all]" >&2; exit 2 ;; esac

SYSROOT=$DIR/sysroot
SITE=$DIR/site-packages
# python3.11:arm64 and its arm64 dependency closure (apt-cache depends --recurse, bookworm), less
# what a non-interactive interpreter never loads (dpkg, tar, install-info and their libraries);
# libstdc++6 for the C++ extension modules (sentencepiece).
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 gcc-12-base libstdc++6
      libexpat1 zlib1g libbz2-1.0 liblzma5 libzstd1 libffi8 libssl3 libsqlite3-0 libuuid1 libcrypt1
      libncursesw6 libtinfo6 libreadline8 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3
      libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2"
PLATFORMS="manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_24_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64"

say() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }

setup_qemu() {
    say "apt-get update, qemu-user"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -q >/dev/null
    command -v qemu-aarch64 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-user >/dev/null
    qemu-aarch64 --version | head -1
}

setup_sysroot() {
    if [ -x "$SYSROOT/usr/bin/python3.11" ]; then echo "arm64 sysroot: $SYSROOT (present)"; return; fi
    say "arm64 CPython from Debian bookworm into $SYSROOT"
    local tmp=$DIR/sysroot.partial
    rm -rf "$tmp" "$DIR/debs" && mkdir -p "$tmp" "$DIR/debs"
    (cd "$DIR/debs" && apt-get download -q $(printf '%s:arm64 ' $DEBS) >/dev/null)
    for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    # Debian's usrmerge: the dynamic loader is looked up as /lib/ld-linux-aarch64.so.1
    [ -e "$tmp/lib" ] || ln -s usr/lib "$tmp/lib"
    mv "$tmp" "$SYSROOT"
}

setup_wheels() {
    local pins
    # The engine's dependencies (pyproject.toml) and theirs, at the host's versions: the wheels
    # the arm64 interpreter needs, read where they are declared so that the list cannot drift.
    pins=$("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, distribution
try:
    import tomllib
except ImportError:  # Python 3.10: pip's vendored copy
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # no packaging: pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
TARGET = dict(os_name="posix", sys_platform="linux", platform_system="Linux", platform_machine="aarch64",
              implementation_name="cpython", platform_python_implementation="CPython",
              python_version="3.11", python_full_version="3.11.2")
with open(sys.argv[1], "rb") as f:
    todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
pins = {}
while todo:
    req = todo.pop()
    # extra = "": no dependency is asked for with extras, so requirements of an extra are skipped
    if req.marker is not None and not req.marker.evaluate({**TARGET, "extra": ""}):
        continue
    name = canonicalize_name(req.name)
    if name in pins:
        continue
    try:
        dist = distribution(req.name)
    except PackageNotFoundError:
        sys.exit(f"{req.name} is not installed for {sys.executable}: its version pins the arm64 wheel (set PYTHON)")
    pins[name] = dist.version
    todo += [Requirement(r) for r in dist.requires or ()]
print(" ".join(f"{name}=={version}" for name, version in sorted(pins.items())))
EOF
)
    if [ -f "$SITE/.pins" ] && [ "$(cat "$SITE/.pins")" = "$pins" ]; then echo "aarch64 wheels: $SITE (present: $pins)"; return; fi
    say "aarch64 wheels: $pins"
    local plat=() p
    for p in $PLATFORMS; do plat+=(--platform "$p"); done
    mkdir -p "$DIR/wheels"
    "$PY" -m pip download -q --only-binary=:all: --no-deps --python-version 3.11 --implementation cp --abi cp311 \
        "${plat[@]}" -d "$DIR/wheels" $pins
    rm -rf "$SITE.partial"
    "$PY" -m pip install -q --no-index --find-links "$DIR/wheels" --only-binary=:all: --no-deps --python-version 3.11 \
        --implementation cp --abi cp311 "${plat[@]}" --target "$SITE.partial" $pins
    echo "$pins" > "$SITE.partial/.pins"
    rm -rf "$SITE" && mv "$SITE.partial" "$SITE"
}

install_app() {
    APP=$(mktemp -d "$DIR/app.XXXXXX")
    trap 'rm -rf "$APP"' EXIT
    say "albert-ref from $REPO into $APP"
    "$PY" -m pip install -q --no-deps --target "$APP" "$REPO"
}

# The emulated interpreter, with nothing from the host's Python environment.
arm_python() {
    cd "$DIR" && env -i PATH=/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8 PYTHONPATH="$APP:$SITE" PYTHONNOUSERSITE=1 \
        NUMBA_CACHE_DIR="$CACHE" PYTHONUNBUFFERED=1 \
        timeout "$TIMEOUT" qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -P "$@"
}

SMOKE='
import platform, sys, time
t = time.perf_counter()
import numpy as np, numba, llvmlite, h5py, sentencepiece
from numba import njit
print(platform.machine(), "Python", sys.version.split()[0], "numpy", np.__version__, "numba", numba.__version__,
      "llvmlite", llvmlite.__version__, "h5py", h5py.__version__, "sentencepiece", sentencepiece.__version__)
assert njit(lambda a: (a * a).sum())(np.arange(4, dtype=np.float32)) == 14
from albert_ref.kernels import isa
print(isa.describe(isa.select()))
assert platform.machine() == "aarch64" and isa.select().name == "sse", "not the 128-bit variant"
print(f"smoke ok ({time.perf_counter() - t:.0f} s)")
'

GOLDEN='
import sys, time
t = time.perf_counter()
from albert_ref.cli import main
from albert_ref.kernels import isa
print(isa.describe(isa.select()))
status = main(["golden", "--check", sys.argv[1]])
print(f"golden --check exit status {status} ({time.perf_counter() - t:.0f} s, emulated, empty Numba cache)")
sys.exit(status)
'

run_emulated() {
    local name=$1 code=$2; shift 2
    CACHE=$(mktemp -d)
    trap 'rm -rf "$CACHE"' RETURN
    say "$name under qemu-aarch64 (waiting for $LOCK)"
    local t0 status=0
    exec 9>"$LOCK"
    flock 9
    t0=$SECONDS
    arm_python -c "$code" "$@" || status=$?
    flock -u 9
    echo "$name: exit status $status, $((SECONDS - t0)) s wall under the lock$([ $status = 124 ] && echo ", TIMED OUT after $TIMEOUT s")"
    return $status
}

echo "host: $(uname -m), $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), $(nproc) cores; host python $("$PY" -V 2>&1)"
mkdir -p "$DIR"
exec 8>"$DIR/.setup.lock"
flock 8
setup_qemu
setup_sysroot
setup_wheels
flock -u 8
install_app
case "$WHAT" in
    smoke) run_emulated smoke "$SMOKE" ;;
    golden) run_emulated golden "$GOLDEN" "$REPO/tests/goldens/demo.json" ;;
    all) run_emulated smoke "$SMOKE" && run_emulated golden "$GOLDEN" "$REPO/tests/goldens/demo.json" ;;
esac
