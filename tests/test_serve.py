"""`albert-ref serve`: real uvicorn servers on 127.0.0.1, called with httpx and the openai
client. Every vector must equal, bit for bit, the one the Encoder (`albert-ref embed`)
gives the same text alone, whatever else the server batched it with."""
from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from peers import require_peers  # noqa: E402

httpx, openai, uvicorn, _ = require_peers("httpx", "openai", "uvicorn", "orjson", extra="serve,test")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import albert_ref  # noqa: E402
from albert_ref.kernels import CONTRACT_VERSION  # noqa: E402
from albert_ref.weights import DEMO_MODEL  # noqa: E402
from albert_ref.testing import assert_equal_bits  # noqa: E402
from model_util import write_pipeline_model  # noqa: E402

MAX_LEN = 128  # the servers' --max-seq-length: long texts are cheap to make, passes stay small
STARTUP_S = 300  # bounds for waiting loops: a loaded 2-core CI machine can be slow to start
WORDS = (DEMO_MODEL.parent / "corpus.txt").read_text(encoding="utf-8").split()


def text(n_words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n_words))


# Short, medium and long texts (3 to ~110 of the MAX_LEN tokens), so that batches mix lengths.
POOL = [text(n, 7 * i) for i, n in enumerate([1, 2, 3, 5, 8, 13, 21, 34, 45, 4, 9, 16, 25, 30, 36, 40, 42, 44])]
TOO_LONG = text(400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = STARTUP_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get(url: str):
    try:
        return httpx.get(url, timeout=10)
    except httpx.TransportError:
        return None


def metrics(url: str) -> dict:
    """{(sample name, sorted labels): value} from /metrics, parsed by prometheus_client."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


class ServerProcess:
    """`albert-ref serve` in a child process, on a free loopback port."""

    def __init__(self, tmp_path, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "albert_ref.cli", "serve", "--port", str(self.port),
                                          "--max-seq-length", str(MAX_LEN), *args], stdout=log, stderr=log)

    def wait_ready(self):
        def ready():
            assert self.proc.poll() is None, f"the server exited:\n{self.log.read_text()}"
            response = get(f"{self.url}/health")
            return response is not None and response.status_code == 200
        wait_for(ready, "/health to answer 200")
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both servers start together (their loading overlaps): "main" for the routes and the
    load test; "held", whose huge collection window keeps requests waiting until a batch
    is full or the server drains, for the 429, disconnect and SIGTERM tests."""
    tmp = tmp_path_factory.mktemp("serve")
    started = {"main": ServerProcess(tmp, "--pooling", "mean", "--max-client-batch-size", "8",
                                     "--payload-limit", "50000"),
               "held": ServerProcess(tmp, "--max-concurrent-requests", "2", "--batch-window-ms", "600000")}
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def main(servers):
    return servers["main"].url


@pytest.fixture(scope="module")
def reference(encoder):
    """Each pool text's vector, embedded alone: (mean pooling, pooled pooling)."""
    assert max(encoder.tokenizer.encode_batch(POOL).lengths) <= MAX_LEN

    def alone(pooling):
        return {t: encoder.encode([t], pooling=pooling, max_seq_length=MAX_LEN)[0] for t in POOL}
    return alone("mean"), alone("pooled")


def post(url, route, body, **kwargs):
    return httpx.post(f"{url}{route}", json=body, timeout=120, **kwargs)


def from_base64(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


# -- vectors ----------------------------------------------------------------------------

def test_openai_route_float_and_base64_equal_embed(main, reference, encoder):
    mean, _ = reference
    texts = POOL[:6]
    for fmt, decode in [("float", lambda e: np.array(e, np.float32)), ("base64", from_base64)]:
        response = post(main, "/v1/embeddings", {"model": "albert_demo", "input": texts, "encoding_format": fmt})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "list" and body["model"] == "albert_demo"
        assert [d["index"] for d in body["data"]] == list(range(len(texts)))
        for t, d in zip(texts, body["data"]):
            assert d["object"] == "embedding"
            assert_equal_bits(decode(d["embedding"]), mean[t], name=f"{fmt} {t!r}")
        tokens = sum(encoder.tokenizer.encode_batch(texts).lengths)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert int(response.headers["x-compute-tokens"]) == tokens
        times = {k: float(response.headers[f"x-{k}-time"]) for k in ("tokenization", "queue", "inference", "total")}
        assert times["inference"] > 0 and times["total"] >= times["inference"]


def test_openai_client(main, reference, encoder):
    mean, _ = reference
    client = openai.OpenAI(base_url=f"{main}/v1", api_key="unused", max_retries=0)
    texts = POOL[3:9]
    for fmt in (openai.omit, "float"):  # the client asks for base64 unless told otherwise
        result = client.embeddings.create(model="albert_demo", input=texts, encoding_format=fmt)
        for t, d in zip(texts, result.data):
            assert_equal_bits(np.array(d.embedding, np.float32), mean[t], name=t)
    one = client.embeddings.create(model="albert_demo", input=POOL[4])
    assert_equal_bits(np.array(one.data[0].embedding, np.float32), mean[POOL[4]], name="one string")
    # token ids (word pieces, the server adds [CLS]/[SEP]) give the text's vector
    ids = [encoder.tokenizer.encode(t).input_ids[1:-1] for t in texts[:2]]
    by_ids = client.embeddings.create(model="albert_demo", input=ids)
    for t, d in zip(texts, by_ids.data):
        assert_equal_bits(np.array(d.embedding, np.float32), mean[t], name=f"ids of {t!r}")
    single_ids = client.embeddings.create(model="albert_demo", input=ids[0])
    assert_equal_bits(np.array(single_ids.data[0].embedding, np.float32), mean[texts[0]], name="one list of ids")
    # dimensions: the model's own size is accepted, any other refused with 422 and why
    same = client.embeddings.create(model="m", input=texts[0], dimensions=128)
    assert_equal_bits(np.array(same.data[0].embedding, np.float32), mean[texts[0]], name="dimensions=128")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.embeddings.create(model="albert_demo", input=texts[0], dimensions=64)
    assert refused.value.status_code == 422
    assert refused.value.response.json() == {"error": {
        "message": "dimensions 64 is not offered: this model's vectors have 128 dimensions "
                   "(omit the field or give 128)", "type": "invalid_request_error", "param": None, "code": 422}}
    with pytest.raises(openai.UnprocessableEntityError, match="max-client-batch-size 8"):
        client.embeddings.create(model="albert_demo", input=POOL[:9])


def test_tei_embed_normalize_and_truncate(main, encoder):
    texts = POOL[5:8]
    response = post(main, "/embed", {"inputs": texts, "normalize": True})
    assert response.status_code == 200, response.text
    want = encoder.encode(texts, pooling="mean", normalize=True, max_seq_length=MAX_LEN)
    assert_equal_bits(np.array(response.json(), np.float32), want, name="normalized")
    # right truncation is embed's: the vector of the text cut to MAX_LEN tokens
    response = post(main, "/embed", {"inputs": TOO_LONG, "truncate": True})
    assert response.status_code == 200, response.text
    with pytest.warns(albert_ref.encoder.TruncationWarning):
        want = encoder.encode([TOO_LONG], pooling="mean", max_seq_length=MAX_LEN)
    assert_equal_bits(np.array(response.json(), np.float32), want, name="truncated right")
    # left truncation keeps the last pieces
    pieces = encoder.tokenizer.encode(TOO_LONG, max_seq_length=10**6).input_ids[1:-1]
    left = post(main, "/embed", {"inputs": TOO_LONG, "truncate": True, "truncation_direction": "Left"})
    kept = post(main, "/embed", {"inputs": [pieces[-(MAX_LEN - 2):]]})
    assert left.status_code == kept.status_code == 200
    assert left.json() == kept.json() != response.json()


def test_tokenize(main, encoder):
    enc = encoder.tokenizer.encode(POOL[6])
    response = post(main, "/tokenize", {"inputs": [POOL[6]]})
    assert response.status_code == 200, response.text
    (tokens,) = response.json()
    assert [t["id"] for t in tokens] == enc.input_ids and [t["text"] for t in tokens] == enc.pieces
    assert [t["special"] for t in tokens] == [True] + [False] * (len(enc.pieces) - 2) + [True]
    bare = post(main, "/tokenize", {"inputs": POOL[6], "add_special_tokens": False}).json()
    assert bare == [tokens[1:-1]]


# -- the promise under load ---------------------------------------------------------------

def test_concurrent_mixed_requests_get_their_solo_vectors(main, reference):
    """Many clients at once, each request a different mix of short and long texts, so that
    every text is batched with different company each time it is sent."""
    mean, _ = reference
    rng = np.random.default_rng(0)
    requests = [[POOL[i] for i in rng.choice(len(POOL), rng.integers(1, 9), replace=False)] for _ in range(48)]
    before = metrics(main)

    def send(i):
        texts = requests[i]
        fmt = "base64" if i % 2 else "float"
        response = post(main, "/v1/embeddings", {"input": texts, "model": "m", "encoding_format": fmt})
        assert response.status_code == 200, response.text
        for t, d in zip(texts, response.json()["data"]):
            got = from_base64(d["embedding"]) if fmt == "base64" else np.array(d["embedding"], np.float32)
            assert_equal_bits(got, mean[t], name=f"request {i}, {t[:30]!r}")
        return len(texts)

    with ThreadPoolExecutor(12) as pool:
        sent = sum(pool.map(send, range(len(requests))))
    after = metrics(main)
    key = ("albert_ref_batch_texts_sum", ())
    assert after[key] - before.get(key, 0) == sent
    # Requests shared forward passes, or the bits above would prove nothing about company.
    # Either sign shows it: fewer passes than requests, or a pass of more texts than any
    # request holds (8). The planner may split a request over passes, so under load the
    # first alone does not hold.
    passes = after[("albert_ref_batch_texts_count", ())] - before.get(("albert_ref_batch_texts_count", ()), 0)
    small = ("albert_ref_batch_texts_bucket", (("le", "8.0"),))
    mixed = passes - (after[small] - before.get(small, 0))   # passes of more than 8 texts
    assert passes < len(requests) or mixed > 0, (passes, mixed)


# -- bad input and overload ----------------------------------------------------------------

@pytest.mark.parametrize("route, body, status, message", [
    ("/v1/embeddings", b'{"input": ["a"', 400, "not valid JSON"),
    ("/v1/embeddings", b'{"input": "caf\xe9"}', 400, "not valid UTF-8"),
    ("/embed", b'["a"]', 422, "must be a JSON object"),
    ("/v1/embeddings", {"model": "m"}, 422, "input is required"),
    ("/v1/embeddings", {"input": []}, 422, "input is empty"),
    ("/v1/embeddings", {"input": ["a", ""]}, 422, "input[1] is an empty string"),
    ("/v1/embeddings", {"input": 3.5}, 422, "not a number"),
    ("/v1/embeddings", {"input": ["a", 7]}, 422, "input[1] must be a string or a list of token ids"),
    ("/v1/embeddings", {"input": [[5, 10**6]]}, 422, "input[0][1] = 1000000 is not a token id"),
    ("/v1/embeddings", {"input": [[5, True]]}, 422, "input[0][1] must be a token id"),
    ("/v1/embeddings", b'{"input": "a\\ud800"}', 422, "lone surrogate"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format must be one of"),
    ("/v1/embeddings", {"input": "a", "dimensions": "128"}, 422, "dimensions must be an integer"),
    ("/v1/embeddings", {"input": ["a"] * 9}, 422, "9 items, more than the server's --max-client-batch-size 8"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "normalize must be true or false"),
    ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "truncation_direction must be"),
    ("/tokenize", {"inputs": [[5, 6]]}, 422, "/tokenize takes texts"),
])
def test_bad_requests_are_refused_with_a_message(main, route, body, status, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{main}{route}", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in (error["message"] if route.startswith("/v1/") else error)


def test_too_long_input_names_its_index_and_length(main, encoder):
    length = len(encoder.tokenizer.encode(TOO_LONG, max_seq_length=10**6).input_ids)
    for route, field in [("/v1/embeddings", "input"), ("/embed", "inputs")]:
        response = post(main, route, {field: ["short", TOO_LONG]})
        assert response.status_code == 422
        assert f"{field}[1] has {length} tokens" in response.text and f"maximum of {MAX_LEN}" in response.text


def test_payload_limit(main):
    big = {"input": ["word " * 12000]}  # > 50,000 bytes
    response = post(main, "/v1/embeddings", big)
    assert response.status_code == 413 and "--payload-limit of 50000" in response.text

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield json.dumps(big).encode()
    response = httpx.post(f"{main}/v1/embeddings", content=chunks(), timeout=60)
    assert response.status_code == 413
    assert post(main, "/v1/embeddings", {"input": "still serving"}).status_code == 200


def raw_request(port: int, body: dict) -> socket.socket:
    """A request sent on a bare socket, so that the test can drop the connection."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def gauges(url):
    m = metrics(url)
    return m[("albert_ref_requests_in_flight", ())], m[("albert_ref_queue_texts", ())]


def test_overload_429_and_disconnect_frees_the_slot(servers, reference):
    held = servers["held"]
    _, pooled = reference
    waiting = [raw_request(held.port, {"input": POOL[i]}) for i in range(2)]
    wait_for(lambda: gauges(held.url) == (2, 2), "two requests to wait in the collection window", 60)
    response = post(held.url, "/v1/embeddings", {"input": "one too many"})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert "maximum of 2 concurrent requests" in response.json()["error"]["message"]
    assert post(held.url, "/embed", {"inputs": "x"}).status_code == 429
    assert get(f"{held.url}/health").status_code == 200  # never limited
    for sock in waiting:
        sock.close()
    wait_for(lambda: gauges(held.url) == (0, 0), "the dropped requests to leave", 60)
    # a full batch (32 texts = --max-batch-requests) runs without waiting for the window
    texts = [POOL[i % len(POOL)] for i in range(32)]
    response = post(held.url, "/embed", {"inputs": texts})
    assert response.status_code == 200, response.text
    assert_equal_bits(np.array(response.json(), np.float32), np.stack([pooled[t] for t in texts]), name="after")
    assert metrics(held.url)[("albert_ref_requests_total", (("route", "/v1/embeddings"), ("status", "429")))] == 1


def test_sigterm_finishes_requests_in_flight(servers, reference):
    """Runs last on the held server: SIGTERM drains the waiting request, answers it, exits 0."""
    held = servers["held"]
    _, pooled = reference
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(r=post(held.url, "/embed", {"inputs": POOL[9]})))
    thread.start()
    wait_for(lambda: gauges(held.url) == (1, 1), "the request to wait in the collection window", 60)
    held.proc.send_signal(signal.SIGTERM)
    thread.join(120)
    assert answer["r"].status_code == 200
    assert_equal_bits(np.array(answer["r"].json()[0], np.float32), pooled[POOL[9]], name="answered while stopping")
    assert held.proc.wait(timeout=120) == 0
    assert get(f"{held.url}/health") is None


# -- health, info, metrics ---------------------------------------------------------------------

def test_health_503_until_loaded_then_200(encoder):
    """An in-process server whose loading the test holds back."""
    from albert_ref.serve import create_app
    app = create_app(encoder.model)
    batcher = app.state.service.batcher
    load, release = batcher._load, threading.Event()
    batcher._load = lambda: release.wait(60) and load()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{url}/health"), "the server to listen", 60)
        response = get(f"{url}/health")
        assert response.status_code == 503 and "loading" in response.json()["error"]
        assert post(url, "/v1/embeddings", {"input": "a"}).status_code == 503
        assert get(f"{url}/metrics").status_code == 200
        release.set()
        wait_for(lambda: get(f"{url}/health").status_code == 200, "/health to answer 200", 60)
        assert post(url, "/v1/embeddings", {"input": "a"}).status_code == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(120)


def test_a_pipeline_model_serves_its_own_vectors(tmp_path):
    """Without --pooling/--normalize the server follows the model's sentence-embedding
    pipeline (pooling modes, Dense layers, normalization), as `albert-ref embed` does."""
    path = write_pipeline_model(tmp_path / "pipeline.h5")
    server = ServerProcess(tmp_path, "--model", str(path))
    try:
        url = server.wait_ready().url
        encoder = albert_ref.Encoder(path)
        info = get(f"{url}/info").json()
        assert (info["pooling"], info["normalize"], info["dimensions"]) == ("cls,mean", True, encoder.dim) == \
            ("cls,mean", True, 8)
        texts = POOL[:5]
        response = post(url, "/v1/embeddings", {"model": "pipeline", "input": texts})
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]], np.float32)
        assert_equal_bits(got, encoder.encode(texts, max_seq_length=MAX_LEN))
    finally:
        server.stop()


def test_a_model_that_cannot_load_stops_the_command(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    run = subprocess.run([sys.executable, "-m", "albert_ref.cli", "serve", "--model", str(bad),
                          "--port", str(free_port())], capture_output=True, text=True, timeout=STARTUP_S)
    assert run.returncode == 2 and "albert-ref: error: cannot serve" in run.stderr and "bad.h5" in run.stderr


def test_info_and_metrics(main, encoder):
    info = httpx.get(f"{main}/info", timeout=10).json()
    assert info["digest"] == encoder.model.digest and info["contract_version"] == CONTRACT_VERSION
    assert (info["dimensions"], info["pooling"], info["max_seq_length"]) == (128, "mean", MAX_LEN)
    assert info["limits"]["max_client_batch_size"] == 8
    before = metrics(main)
    assert post(main, "/v1/embeddings", {"input": ["a b c", "d"]}).status_code == 200
    assert post(main, "/v1/embeddings", {"input": []}).status_code == 422
    after = metrics(main)
    ok = ("albert_ref_requests_total", (("route", "/v1/embeddings"), ("status", "200")))
    bad = ("albert_ref_requests_total", (("route", "/v1/embeddings"), ("status", "422")))
    assert after[ok] - before.get(ok, 0) == 1 and after[bad] - before.get(bad, 0) == 1
    tokens = ("albert_ref_tokens_total", ())
    assert after[tokens] - before[tokens] == sum(encoder.tokenizer.encode_batch(["a b c", "d"]).lengths)
    for name in ("albert_ref_request_duration_seconds_count", "albert_ref_batch_tokens_count",
                 "albert_ref_forward_seconds_count"):
        assert any(k[0] == name for k in after), name


def test_readme_openai_example_runs(main):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    scope = {}
    exec(compile(code.replace("http://localhost:8080", main), "README.md", "exec"), scope)
    assert len(scope["vectors"]) == 2 and len(scope["vectors"][0]) == 128


@pytest.mark.parametrize("options, message", [
    (dict(backend="numpy"), "bit-contract backends"),
    (dict(pooling="sum"), "pooling must be one of"),
    (dict(max_batch_tokens=0), "max_batch_tokens must be a positive int"),
    (dict(payload_limit=True), "payload_limit must be a positive int"),
    (dict(batch_window_ms=-1), "batch_window_ms must be at least 0"),
])
def test_create_app_refuses_bad_options(options, message):
    from albert_ref.serve import create_app
    with pytest.raises(albert_ref.InputError, match=message):
        create_app(**options)


def test_json_numbers_are_the_float32_values_and_never_null():
    from albert_ref.serve import JSON, json_numbers
    vectors = np.array([[0.1, -2.5e-8, 3.0, 1e30], [np.float32(1) / 3, -0.0, 7.0, 5e-45]], np.float32)
    body = JSON({"data": json_numbers(vectors)}).body
    assert_equal_bits(np.array(json.loads(body)["data"], np.float32), vectors, name="through JSON")
    assert json.loads(body)["data"][1][0] == float(vectors[1, 0])  # the float32's exact value, not a rounding
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="non-finite values, which JSON numbers cannot carry"):
            json_numbers(np.array([[1.0, bad]], np.float32))
