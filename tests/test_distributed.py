"""Corpus embedding on a Dask LocalCluster (worker processes under nannies): the same bits,
ids and order as single-process `albert-ref embed`, every row exactly once through worker
and client deaths, corrupted shards recomputed, bad rows failing only their partition,
and a worker with a different model file refused."""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from unittest import mock

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from peers import require_peers

dask, _, pa = require_peers("dask", "distributed", "pyarrow", extra="dask")
import pyarrow.parquet as pq  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from albert_ref import corpus, shards  # noqa: E402
from albert_ref.cli import main  # noqa: E402
from albert_ref.distributed import (ModelPlugin, WorkerSetupError, embed_corpus, local_cluster,  # noqa: E402
                                    open_embeddings)
from albert_ref.embed_inputs import from_file  # noqa: E402
from albert_ref.errors import InputError  # noqa: E402
from albert_ref.weights import DEMO_MODEL  # noqa: E402
from albert_ref.weights.model_file import read_model, write_model  # noqa: E402
from albert_ref.weights.random_model import random_model_file  # noqa: E402
from albert_ref.testing import assert_equal_bits  # noqa: E402
from model_util import write_pipeline_model  # noqa: E402

WORDS = "the of and to in is was for on that with city music world river house café naïve 1,999".split()
OPTIONS = dict(pooling="mean", max_seq_length=48, batch_size=4)
CLI_OPTIONS = ["--pooling", "mean", "--max-seq-length", "48", "--batch-size", "4"]


def sentence(rng):
    return " ".join(rng.choice(WORDS, rng.integers(1, 40)))


@pytest.fixture(scope="module")
def client():
    """Two single-task worker processes with one kernel thread each (this process's
    single-process runs use all cores); a killed worker is restarted by its nanny."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 10}):
        with local_cluster(2, 1, dashboard_address=":0") as cluster, Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """a.jsonl (70 texts on 76 lines: blank lines, string and integer ids, texts of every
    length up to past max_seq_length) and b.parquet (30 rows in three row groups), and
    their single-process embeddings."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(70):
        lines.append(json.dumps({"id": f"a-{i}" if i % 3 else i, "text": sentence(rng)}, ensure_ascii=False))
        if i % 11 == 4:
            lines.append("")
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [{"id": f"b-{i}", "text": sentence(rng)} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "b.parquet", row_group_size=12)
    # the same rows as .jsonl, for single-process embed (which reads no Parquet)
    single = tmp_path_factory.mktemp("single")
    (single / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected = {}
    for name, source in (("a", folder / "a.jsonl"), ("b", single / "b.jsonl")):
        out = single / f"{name}.h5"
        assert main(["embed", "--input", str(source), "--output", str(out), "--id-field", "id", *CLI_OPTIONS]) == 0
        with h5py.File(out) as f:
            expected[name] = {"vectors": f["vectors"][:], "ids": f["ids"][:],
                              "keys": [k.decode() for k in f["keys"][:]]}
    return folder, expected


def inputs(folder):
    return [str(folder / "a.jsonl"), str(folder / "b.parquet")]


def assert_complete(out, expected):
    """Every row once, in input order, with its single-process vector, id and key."""
    emb = open_embeddings(out)
    want = [expected["a"], expected["b"]]
    assert_equal_bits(emb.vectors, np.concatenate([w["vectors"] for w in want]), name="vectors")
    np.testing.assert_array_equal(emb.ids, np.concatenate([w["ids"] for w in want]))
    assert emb.keys == [k for w in want for k in w["keys"]]
    assert [os.path.basename(s) for s in emb.sources] == ["a.jsonl"] * 70 + ["b.parquet"] * 30
    assert not list(out.glob(".*.tmp"))
    return emb


def test_distributed_output_is_single_process_embed_bit_for_bit(client, corpus_dir, tmp_path):
    folder, expected = corpus_dir
    out = tmp_path / "out"
    summary = embed_corpus(inputs(folder), out, client=client, id_field="id", partition_size=16, **OPTIONS)
    assert summary.ok and summary.rows == 100 and summary.blank_lines == 6
    assert summary.partitions == summary.computed == 5 + 2      # 76 lines of a.jsonl, 30 rows of b.parquet
    assert_complete(out, expected)
    again = embed_corpus(inputs(folder), out, client=client, id_field="id", partition_size=16, **OPTIONS)
    assert again.ok and again.done_before == 7 and again.computed == 0


def test_a_pipeline_model_s_own_pooling_dense_and_normalization_apply(client, corpus_dir, tmp_path):
    """Without pooling/normalize/max_seq_length, a job follows the model's pipeline, as the
    single-process `albert-ref embed` does, bit for bit."""
    folder, _ = corpus_dir
    model = write_pipeline_model(tmp_path / "pipeline.h5")
    single = tmp_path / "single.h5"
    assert main(["embed", "--model", str(model), "--input", str(folder / "a.jsonl"), "--output", str(single)]) == 0
    summary = embed_corpus([str(folder / "a.jsonl")], tmp_path / "out", model=model, client=client,
                           partition_size=32)
    assert summary.ok and summary.dim == 8
    with h5py.File(single) as f:
        assert_equal_bits(open_embeddings(tmp_path / "out").vectors, f["vectors"][:], name="vectors")


def test_one_worker_running_two_tasks_at_once_gets_the_same_bits(corpus_dir, tmp_path):
    """Two Dask threads in one worker process sharing one model, two kernel threads each:
    the vectors are those of any other arrangement (the promise holds however the
    worker's tasks overlap; the plugin's lock is for cores and memory, not for bits)."""
    folder, expected = corpus_dir
    with LocalCluster(n_workers=1, threads_per_worker=2, env={"NUMBA_NUM_THREADS": "2"}, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        summary = embed_corpus(inputs(folder), tmp_path / "out", client=c, id_field="id", partition_size=16,
                               **OPTIONS)
    assert summary.ok
    assert_complete(tmp_path / "out", expected)


def test_a_worker_killed_mid_job_leaves_every_row_exactly_once(client, corpus_dir, tmp_path):
    folder, expected = corpus_dir
    out = tmp_path / "out"
    result = {}
    job = threading.Thread(target=lambda: result.update(summary=embed_corpus(
        inputs(folder), out, client=client, id_field="id", partition_size=4, **OPTIONS)))
    job.start()
    deadline = time.monotonic() + 120
    while not (busy := [w for w, keys in client.processing().items() if keys]) or not list(out.glob("part-*.json")):
        assert job.is_alive() and time.monotonic() < deadline, "the job ended before a worker could be killed"
        time.sleep(0.01)
    client.run(os._exit, 1, workers=busy[:1], on_error="ignore")   # its connection drops: no reply
    job.join(timeout=180)
    assert result["summary"].ok
    assert len(list(out.glob("part-*.json"))) == result["summary"].partitions == 19 + 8
    assert_complete(out, expected)
    client.wait_for_workers(2, timeout=60)


def test_a_killed_client_is_resumed_by_the_same_command(client, corpus_dir, tmp_path):
    folder, expected = corpus_dir
    out = tmp_path / "out"
    command = ["embed", "--input", str(folder / "*.*"), "--output", str(out), "--id-field", "id",
               "--partition-size", "4", "--cluster", client.scheduler.address, *CLI_OPTIONS]
    proc = subprocess.Popen([sys.executable, "-m", "albert_ref.cli", *command], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.json"))) < 3:
        assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / shards.MANIFEST).exists()
    assert main(command) == 0
    assert_complete(out, expected)


def test_a_corrupted_shard_is_detected_and_recomputed(client, corpus_dir, tmp_path):
    folder, expected = corpus_dir
    out = tmp_path / "out"
    run = dict(client=client, id_field="id", partition_size=40, shard_format="h5", **OPTIONS)
    assert embed_corpus(inputs(folder), out, **run).ok
    with h5py.File(out / "part-000000.h5", "r+") as f:              # a valid file with one bit flipped
        f["vectors"][3, 5] = np.nextafter(f["vectors"][3, 5], np.float32(np.inf))
    (out / "part-000002.h5").write_bytes((out / "part-000002.h5").read_bytes()[:500])   # a torn file
    with pytest.raises(shards.CorruptShardError, match="part-000000.h5: its vectors do not match"):
        open_embeddings(out).vectors
    summary = embed_corpus(inputs(folder), out, **run)
    assert summary.ok and summary.computed == 2 and summary.done_before == 1
    assert set(summary.recomputed) == {"part-000000", "part-000002"}
    assert "unreadable" in summary.recomputed["part-000002"]
    assert_complete(out, expected)


def test_a_bad_row_fails_its_partition_only(client, corpus_dir, tmp_path):
    folder, _ = corpus_dir
    lines = (folder / "a.jsonl").read_text(encoding="utf-8").split("\n")
    lines[30] = '{"id": 30, "text": "unterminated'
    (tmp_path / "a.jsonl").write_text("\n".join(lines), encoding="utf-8")
    table = pq.read_table(folder / "b.parquet").to_pylist()
    table[25]["text"] = None
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "b.parquet")
    out = tmp_path / "out"
    assert main(["embed", "--input", str(tmp_path / "*.*"), "--output", str(out), "--id-field", "id",
                 "--partition-size", "16", "--cluster", client.scheduler.address, *CLI_OPTIONS]) == 2
    written = {p.name for p in out.glob("part-*")}
    assert written == {f"part-{k:06d}.{ext}" for k in (0, 2, 3, 4, 5) for ext in ("parquet", "json")}
    assert not (out / shards.MANIFEST).exists() and not list(out.glob(".*.tmp"))
    summary = embed_corpus([tmp_path / "a.jsonl", tmp_path / "b.parquet"], out, client=client, id_field="id",
                           partition_size=16, **OPTIONS)
    assert list(summary.failed) == ["part-000001", "part-000006"] and summary.done_before == 5
    assert f"{tmp_path / 'a.jsonl'}:31: not valid JSON" in summary.failed["part-000001"]
    assert "b.parquet: row 26: column 'text' is None" in summary.failed["part-000006"]   # rows count from 1


def test_a_missing_parquet_column_is_refused_before_any_task(client, corpus_dir, tmp_path):
    folder, _ = corpus_dir
    with pytest.raises(InputError, match=r"b\.parquet: no column 'body' \(columns: .*'text'.*\); choose one with --field"):
        embed_corpus(inputs(folder), tmp_path / "out", client=client, fields=["body"], **OPTIONS)
    assert not (tmp_path / "out").exists()


def test_a_worker_with_a_different_model_file_is_refused(client, tmp_path):
    demo = read_model(DEMO_MODEL)
    other = tmp_path / "other.h5"
    write_model(other, random_model_file(demo.config, seed=5, spm_model=demo.spm_model, **demo.tokenizer_options))
    plugin = ModelPlugin(str(other), demo.digest)
    try:
        with pytest.raises(WorkerSetupError, match="has digest .* every worker must hold the same model file"):
            client.register_plugin(plugin)
    finally:
        client.unregister_worker_plugin(plugin.name)


def test_a_changed_input_model_or_option_is_refused(client, corpus_dir, tmp_path):
    folder, _ = corpus_dir
    (tmp_path / "a.jsonl").write_bytes((folder / "a.jsonl").read_bytes())
    out = tmp_path / "out"
    run = dict(client=client, partition_size=40, **OPTIONS)
    assert embed_corpus(tmp_path / "a.jsonl", out, **run).ok
    with pytest.raises(InputError, match="holds a job for a different command .*differs in: pooling"):
        embed_corpus(tmp_path / "a.jsonl", out, **{**run, "pooling": "max"})   # finished, not "unfinished"
    with (tmp_path / "a.jsonl").open("a") as fh:
        fh.write('{"text": "one more"}\n')
    with pytest.raises(InputError, match=r"differs in: inputs; changed or new input: .*a\.jsonl"):
        embed_corpus(tmp_path / "a.jsonl", out, **run)
    demo = read_model(DEMO_MODEL)
    write_model(tmp_path / "other.h5", random_model_file(demo.config, seed=5, spm_model=demo.spm_model,
                                                         **demo.tokenizer_options))
    with pytest.raises(InputError, match="model_sha256"):
        embed_corpus(tmp_path / "a.jsonl", out, model=tmp_path / "other.h5", **run)
    summary = embed_corpus(tmp_path / "a.jsonl", out, restart=True, **run)
    assert summary.ok and summary.rows == 71 and len(open_embeddings(out)) == 71


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["", " ", "x", "a b", "é", "{}"]), max_size=25), st.booleans(),
       st.integers(1, 8), st.sampled_from([1, 2, 3, 7, corpus._BLOCK]))
def test_partitions_cut_a_file_into_its_rows_exactly(tmp_path_factory, lines, final_newline, size, block):
    """Also with the scan's read blocks a few bytes long, so that lines cross block edges."""
    path = tmp_path_factory.mktemp("cut") / "f.txt"
    data = ("\n".join(lines) + "\n" * final_newline).encode()
    path.write_bytes(data)
    with mock.patch.object(corpus, "_BLOCK", block):
        files, parts = corpus.partitions(corpus.expand(str(path)), size)
    assert files[0].size == len(data)
    got = [corpus.read(p, None, False, None) for p in parts]
    assert all(p.stop - p.start <= size for p in parts)
    try:
        whole = from_file(str(path), None, None, False)
    except InputError:
        assert not any(g.texts for g in got)
        return
    assert [t for g in got for t in g.texts] == whole.texts
    assert np.concatenate([g.ids for g in got]).tolist() == whole.ids.tolist()


def test_the_command_starts_a_local_cluster_and_prints_its_dashboard(corpus_dir, tmp_path, capsys):
    folder, expected = corpus_dir
    out = tmp_path / "out"
    assert main(["embed", "--input", str(folder / "b.parquet"), "--output", str(out), "--id-field", "id",
                 "--cluster", "--workers", "1", "--shard-format", "h5", *CLI_OPTIONS]) == 0
    captured = capsys.readouterr()
    assert "started a local Dask cluster: 1 worker process(es)" in captured.err
    assert "dashboard http://" in captured.err
    assert f"{out}: 30 vectors of 128 float32 in 1 of 1 partitions" in captured.out
    emb = open_embeddings(out)
    assert_equal_bits(emb.vectors, expected["b"]["vectors"], name="vectors")
    assert emb.keys == expected["b"]["keys"]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2", "hello"], "--workers applies with --cluster only"),
    (["--cluster", "hello"], "--cluster embeds files: give --input"),
    (["--cluster", "--input", "x.txt"], "--cluster needs --output FOLDER"),
    (["--cluster", "tcp://127.0.0.1:1", "--workers", "2", "--input", "x.txt", "-o", "out"], "--workers sizes a local"),
    (["--cluster", "--backend", "numpy", "--input", "x.txt", "-o", "out"], "not 'numpy'"),
])
def test_cluster_options_are_checked(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("a text\n")
    assert main(["embed", *argv]) == 2
    assert message in capsys.readouterr().err


def test_pairs_from_tsv_and_txt_match_single_process_embed(client, tmp_path):
    """A .tsv file (one partition: its quoted fields may span lines) and a .txt file of
    TEXT_A<TAB>TEXT_B lines, embedded as pairs."""
    rng = np.random.default_rng(8)
    pairs = [(sentence(rng), sentence(rng)) for _ in range(24)]
    table = "".join(f'"{a}\n"\t{b}\tk{i}\n' for i, (a, b) in enumerate(pairs))   # a quoted field spans lines
    (tmp_path / "c.tsv").write_text("q\tdoc\tkey\n" + table, encoding="utf-8")
    (tmp_path / "d.txt").write_text("".join(f"{b}\t{a}\n" for a, b in pairs), encoding="utf-8")
    want = []
    for name, extra in (("c.tsv", ["--field", "q", "--field", "doc"]), ("d.txt", [])):
        out = tmp_path / f"{name}.h5"
        assert main(["embed", "--input", str(tmp_path / name), "--output", str(out), "--pair", *extra,
                     *CLI_OPTIONS]) == 0
        with h5py.File(out) as f:
            want.append((f["vectors"][:], f["ids"][:]))
    # an option that no partition of a file can take is refused before anything runs
    with pytest.raises(InputError, match="--field applies to .jsonl, .csv and .tsv inputs, not to .*d.txt"):
        embed_corpus([tmp_path / "c.tsv", tmp_path / "d.txt"], tmp_path / "out", client=client, pair=True,
                     fields=["q", "doc"], partition_size=5, **OPTIONS)
    assert not (tmp_path / "out").exists()
    summary = embed_corpus([tmp_path / "c.tsv"], tmp_path / "out-c", client=client, pair=True, fields=["q", "doc"],
                           partition_size=5, **OPTIONS)
    assert summary.ok and summary.partitions == 1
    summary = embed_corpus([tmp_path / "d.txt"], tmp_path / "out-d", client=client, pair=True, partition_size=5,
                           **OPTIONS)
    assert summary.ok and summary.partitions == 5
    for folder, (vectors, ids) in zip(("out-c", "out-d"), want):
        emb = open_embeddings(tmp_path / folder)
        assert_equal_bits(emb.vectors, vectors, name=folder)
        np.testing.assert_array_equal(emb.ids, ids)
