"""A long `albert-ref embed --output` job killed mid-run (SIGKILL, then Ctrl-C) and run
again ends with exactly the rows of an uninterrupted run, bit for bit, and no output
file ever exists half-written."""
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from albert_ref.cli import main

WORDS = ("the of and to in is was for on that with as by it he she they we you at from his her an were are "
         "which this be or has had not but one two three new first after also who year people city music world "
         "time state film game team school war river house album season number 1,999 12,500 café naïve").split()
CHUNK = 12


def texts(n=240, seed=7):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(5, 90))) for _ in range(n)]


def command(inp, out):
    return ["embed", "--input", str(inp), "--output", str(out), "--pooling", "mean", "--max-seq-length", "64",
            "--batch-size", "4", "--chunk-size", str(CHUNK)]


def start(inp, out):
    return subprocess.Popen([sys.executable, "-m", "albert_ref.cli", *command(inp, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def chunks(out):
    return sorted((out.parent / (out.name + ".partial")).glob("chunk-*.npz"))


def interrupt(proc, out, at_least, sig):
    """Send `sig` once `at_least` chunks are saved; return the process's exit code and stderr."""
    deadline = time.monotonic() + 120
    while len(chunks(out)) < at_least:
        assert proc.poll() is None, f"the job ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in ("vectors", "ids", "truncated")}


def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts()) + "\n", encoding="utf-8")
    total_chunks = -(-240 // CHUNK)
    out = tmp_path / "out.h5"

    code, err = interrupt(start(inp, out), out, 3, signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = len(chunks(out))
    assert 3 <= done < total_chunks and not out.exists()

    code, err = interrupt(start(inp, out), out, done + 2, signal.SIGINT)
    assert code == 130, err
    assert f"resuming {out}: {done * CHUNK} of 240 texts" in err
    assert "run the same command again to resume" in err
    assert not out.exists()

    proc = start(inp, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming" in err and "texts were longer than max_seq_length 64" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.h5"]

    reference = tmp_path / "ref" / "out.h5"
    reference.parent.mkdir()
    assert main(command(inp, reference)) == 0
    resumed, uninterrupted = read(out), read(reference)
    assert resumed["ids"].tolist() == list(range(240))
    assert resumed["truncated"].any()
    for key in uninterrupted:
        assert resumed[key].dtype == uninterrupted[key].dtype
        assert resumed[key].tobytes() == uninterrupted[key].tobytes(), key
