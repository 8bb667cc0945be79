"""The CLI's one line on stderr when the kernels are being compiled (the first run after an
install, an upgrade or a change of CPU): seconds of silence otherwise look like a hang.

Numba announces each compilation with a "numba:compile" event, and none when it loads a
function from its on-disk cache, so the line appears exactly when a run compiles, and so
do the helper processes that compile the kernels meanwhile (albert_ref/compile_helper.py).
Only the CLI listens (`notice_compilation`, a context manager): a library import changes
nothing process-wide, prints nothing and starts no process.

Entering the block does not import Numba: the CLI enters it before it knows whether the
command runs kernels, and importing Numba then (0.15 s) would keep the import from
overlapping with the model file's hashing in albert_ref.load. The listener is installed at
once when albert_ref.kernels is already imported, and otherwise by albert_ref.kernels as
it is imported (`install_requested`, for every block then open), before any of its
functions can compile.
"""
from __future__ import annotations

import contextlib
import sys
import threading

from albert_ref.errors import IsaError

_lock = threading.Lock()
_open: list = []   # the CompileNotice of every block being run (in any thread)


def _describe_target() -> str:
    """`znver4 (avx512)`: the CPU Numba compiles for and the cpu backend's variant."""
    from albert_ref.kernels import isa
    try:
        variant = isa.select().name
    except IsaError:  # a bad ALBERT_REF_ISA: the backend reports it; the notice does not need it
        variant = isa.target().variants[0]
    return f"{isa.target().cpu} ({variant})"


class CompileNotice:
    """Writes one line to `stream` on the first compilation of an albert_ref function,
    whichever thread compiles (the kernels' threads, a server's compute thread)."""

    def __init__(self, stream=None, helper=None):
        self.stream = stream
        self.helper = helper      # CompileHelper (its processes) to start with the first compilation, or None
        self._lock = threading.Lock()
        self.said = False
        self._listener = None     # Numba's listener, once installed

    def on_start(self, ev):
        if self.said or not getattr(ev.data["dispatcher"].py_func, "__module__", "").startswith("albert_ref."):
            return
        with self._lock:
            if self.said:
                return
            self.said = True
        if self.helper is not None:
            self.helper.start()
        stream = self.stream or sys.stderr
        print(f"albert-ref: compiling the kernels for {_describe_target()}; first run only, "
              f"later runs load them from Numba's cache...", file=stream, flush=True)

    def install(self):
        from numba.core import event

        class Listener(event.Listener):
            on_start = staticmethod(self.on_start)

            def on_end(self, ev):
                pass
        self._listener = Listener()
        event.register("numba:compile", self._listener)

    def uninstall(self):
        if self._listener is not None:
            from numba.core import event
            event.unregister("numba:compile", self._listener)
            self._listener = None


def install_requested() -> None:
    """Install the listeners of the open blocks (albert_ref.kernels calls this on import)."""
    with _lock:
        for notice in _open:
            if notice._listener is None:
                notice.install()


@contextlib.contextmanager
def notice_compilation(stream=None, helper=False):
    """Within the block, the first compilation of albert_ref code prints one line, and with
    helper=True (the cpu backend) starts the processes that compile the kernels meanwhile
    (albert_ref.compile_helper), which are ended when the block ends."""
    from albert_ref.compile_helper import CompileHelper
    process = CompileHelper() if helper else None
    notice = CompileNotice(stream, process)
    with _lock:
        _open.append(notice)
        if "albert_ref.kernels" in sys.modules:
            notice.install()
    try:
        yield
    finally:
        with _lock:
            _open.remove(notice)
            notice.uninstall()
        if process is not None:
            process.stop()
