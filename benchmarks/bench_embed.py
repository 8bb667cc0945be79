"""Embedding throughput (texts/s) of albert-ref's Encoder on an xlarge-shaped random-weight
model (TF-Hub albert_xlarge/2 module card: hidden 2048, 32 heads, 24 layers, intermediate
8192, embedding 128), against, in the same run and with the same thread count:

- naive: the same albert-ref model, batches in input order, every batch padded to the
  longest text of the whole job (fixed padding);
- hf-st: Hugging Face transformers AlbertModel (PyTorch eager, float32, the same weights)
  run the way sentence-transformers' encode() runs it: texts sorted by character length,
  each batch padded to its own longest, results put back in input order.

- st: sentence-transformers itself (`SentenceTransformer.encode`: Transformer with the
  same weights and Hugging Face's AlbertTokenizer over the same sentencepiece model, mean
  Pooling), the same batch size and max_seq_length; on `--shape small`, the shape of
  sentence-transformers/paraphrase-albert-small-v2 (hidden 768, 6 layers, 12 heads,
  intermediate 3072, embedding 128, vocab 30000), with its --max-seq-length 100.

The first three tokenize with the same albert-ref tokenizer (timed) and all mean-pool over
the real tokens. Each engine runs in its own process (one engine's thread pool must not slow the
next), after a warm-up batch. The texts: sentences of 5 to 120 words (log-normal around
18 words; the drawn 1,000 have median 17) drawn with a fixed seed from the words of
weights/demo/corpus.txt, by frequency; --n takes the first n of the same 1,000. The
tokenizer is sentencepiece trained on those 1,000 (2,000 pieces asked for; the small
corpus yields about 730), so that a word is about one token, as with ALBERT's 30k vocab
on English. The script also prints the token rows the forward passes run: real tokens,
fixed runs of --batch-size sorted texts, and the Encoder's least-padding batches.

    python benchmarks/bench_embed.py                      # the recorded run: 1,000 texts, xlarge
    python benchmarks/bench_embed.py --n 8 --shape demo   # a quick check
    python benchmarks/bench_embed.py --shape small --max-seq-length 100 --engines albert-ref st
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

import albert_ref
from albert_ref.config import ALBERT_XLARGE_2, AlbertConfig
from albert_ref.encoder import SORT_WINDOW, batches
from albert_ref.model import Model
from albert_ref.tokenizer import Tokenizer
from albert_ref.weights import DEMO_MODEL
from albert_ref.weights.random_model import random_model_file

CORPUS = DEMO_MODEL.parent / "corpus.txt"
POOL = 1000
SHAPES = {
    "xlarge": {k: ALBERT_XLARGE_2[k] for k in ("embedding_size", "hidden_size", "num_hidden_layers",
                                                "num_attention_heads", "intermediate_size")},
    "small": dict(embedding_size=128, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                  intermediate_size=3072),  # sentence-transformers/paraphrase-albert-small-v2
    "demo": dict(embedding_size=32, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=512),
}


def sentences(n: int = POOL, seed: int = 0) -> list[str]:
    counts = collections.Counter(re.findall(r"[a-z]+", CORPUS.read_text(encoding="utf-8").lower()))
    words, freq = list(counts), np.array(list(counts.values()), np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for length in np.clip(np.rint(rng.lognormal(np.log(18), 0.75, n)), 5, 120).astype(int):
        chosen = rng.choice(words, length, p=freq / freq.sum())
        commas = rng.random(length) < 0.08
        out.append(" ".join(w + ("," if c else "") for w, c in zip(chosen, commas)).capitalize() + ".")
    return out


def train_tokenizer(texts: list[str]) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="unigram", vocab_size=2000,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"], num_threads=1, minloglevel=2)
    return model.getvalue()


def model_file(shape: str, spm_model: bytes):
    config = AlbertConfig(vocab_size=30000, max_position_embeddings=512, hidden_act="gelu_tanh", **SHAPES[shape])
    return random_model_file(config, seed=0, spm_model=spm_model)


# -- the engines: each gets the model file, texts and options, returns a function to time --

def albert_ref_sorted(mf, texts, args):
    encoder = albert_ref.Encoder(Model(mf, backend="cpu", threads=args.threads))
    return lambda batch: encoder.encode(batch, pooling="mean", batch_size=args.batch_size,
                                        max_seq_length=args.max_seq_length)


def albert_ref_naive(mf, texts, args):
    """Input order, every batch padded to the longest text of the job."""
    model = Model(mf, backend="cpu", threads=args.threads)

    def run(batch_texts):
        b = model.tokenizer.encode_batch(batch_texts, max_seq_length=args.max_seq_length)
        out = []
        for i in range(0, len(batch_texts), args.batch_size):
            rows = slice(i, i + args.batch_size)
            seq = model(b.input_ids[rows], b.input_mask[rows], b.segment_ids[rows])["sequence_output"]
            mask = b.input_mask[rows, :, None].astype(np.float64)
            out.append(((seq * mask).sum(axis=1) / mask.sum(axis=1)).astype(np.float32))
        return np.concatenate(out)
    return run


def hf_albert(mf):
    """transformers.AlbertModel with the model file's weights (TF kernels transposed to Linear)."""
    import torch
    import transformers
    from albert_ref.weights.hf_source import name_table
    c = mf.config
    hf = transformers.AlbertModel(transformers.AlbertConfig(
        vocab_size=c.vocab_size, embedding_size=c.embedding_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act="gelu_new", max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).eval()
    state = {hf_name: torch.from_numpy(np.ascontiguousarray(mf.tensors[tf].T if transpose else mf.tensors[tf]))
             for hf_name, (tf, transpose) in name_table(c).items() if tf in mf.tensors}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    return hf


def hf_sentence_transformers(mf, texts, args):
    """hf_albert driven like sentence-transformers' encode(): sort by -len(text), pad per batch."""
    import torch
    torch.set_num_threads(args.threads)
    c = mf.config
    hf = hf_albert(mf)
    tokenizer = Tokenizer(mf.spm_model, **mf.tokenizer_options)

    def run(batch_texts):
        order = np.argsort([-len(t) for t in batch_texts], kind="stable")
        out = np.empty((len(batch_texts), c.hidden_size), np.float32)
        with torch.inference_mode():
            for i in range(0, len(batch_texts), args.batch_size):
                rows = order[i:i + args.batch_size]
                b = tokenizer.encode_batch([batch_texts[r] for r in rows], max_seq_length=args.max_seq_length)
                mask = torch.from_numpy(b.input_mask).long()
                seq = hf(input_ids=torch.from_numpy(b.input_ids).long(), attention_mask=mask,
                         token_type_ids=torch.from_numpy(b.segment_ids).long()).last_hidden_state
                out[rows] = ((seq * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
        return out
    return run


def sentence_transformers_encode(mf, texts, args):
    """SentenceTransformer.encode over hf_albert's weights saved with Hugging Face's slow
    AlbertTokenizer, mean pooling."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-st-") as tmp:  # everything is loaded from it at once
        folder = Path(tmp)
        (folder / "spiece.model").write_bytes(mf.spm_model)
        hf_albert(mf).save_pretrained(folder)
        transformers.AlbertTokenizer(str(folder / "spiece.model")).save_pretrained(folder)
        st = SentenceTransformer(modules=[
            Transformer(str(folder), max_seq_length=args.max_seq_length, processor_kwargs={"use_fast": False}),
            Pooling(mf.config.hidden_size, pooling_mode="mean")], device="cpu").eval()
    return lambda batch: st.encode(batch, batch_size=args.batch_size, convert_to_numpy=True)


def hf_label():
    import torch
    import transformers
    return f"transformers {transformers.__version__} + torch {torch.__version__}, sentence-transformers-style"


ENGINES = {
    "albert-ref": ("albert-ref Encoder (length-sorted, least-padding batches)", albert_ref_sorted),
    "naive": ("albert-ref naive (input order, padded to the longest)", albert_ref_naive),
    "hf-st": (None, hf_sentence_transformers),
    "st": ("sentence-transformers encode()", sentence_transformers_encode),
}


def run_engine(args) -> None:
    """Child process: build, warm up, time one engine; save its vectors."""
    pool = sentences()
    texts = pool[:args.n]
    mf = model_file(args.shape, train_tokenizer(pool))
    run = ENGINES[args.engine][1](mf, texts, args)
    by_length = sorted(texts, key=len)  # kernels for short and long sequences loaded, thread pools started
    run(by_length[:args.batch_size] + by_length[-args.batch_size:])
    start = time.perf_counter()
    vectors = run(texts)
    seconds = time.perf_counter() - start
    np.save(args.save, vectors)
    print(json.dumps({"seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=POOL, help=f"sentences, at most {POOL} (default {POOL})")
    parser.add_argument("--shape", choices=SHAPES, default="xlarge")
    parser.add_argument("--threads", type=int, default=None, help="default: every core numba sees")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["albert-ref", "naive", "hf-st"])
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.n <= POOL:
        parser.error(f"--n must be between 1 and {POOL}")
    if args.threads is None:
        import numba
        args.threads = numba.config.NUMBA_NUM_THREADS
    if args.engine:
        return run_engine(args)

    pool = sentences()
    texts = pool[:args.n]
    tokenizer = Tokenizer(train_tokenizer(pool))
    tokens = np.array(tokenizer.encode_batch(texts, max_seq_length=args.max_seq_length).lengths)
    words = np.array([len(t.split()) for t in texts])
    print(f"{args.n} texts: {words.min()}-{words.max()} words (median {int(np.median(words))}), "
          f"{tokens.min()}-{tokens.max()} tokens (mean {tokens.mean():.1f}, padded-to-longest {tokens.max()}); "
          f"tokenizer vocab {tokenizer.vocab_size}; {args.shape} shape; {args.threads} threads; "
          f"batch {args.batch_size}; {platform.machine()}")
    # token rows the forward passes run: fixed runs of batch_size sorted texts vs the Encoder's batches
    bs, fixed, planned = args.batch_size, 0, []
    for window in range(0, len(tokens), SORT_WINDOW):
        lengths = tokens[window:window + SORT_WINDOW]
        desc = np.sort(lengths)[::-1]
        fixed += sum(int(desc[i]) * len(desc[i:i + bs]) for i in range(0, len(desc), bs))
        planned += [len(rows) * width for rows, width in batches(lengths, bs)]
    print(f"token rows: {tokens.sum()} real; {fixed} in fixed batches of {bs}; {sum(planned)} in the Encoder's "
          f"{len(planned)} batches (smallest {min(planned)} rows)")
    common = ["--n", str(args.n), "--shape", args.shape, "--threads", str(args.threads),
              "--batch-size", str(args.batch_size), "--max-seq-length", str(args.max_seq_length)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            save = Path(tmp) / f"{engine}.npy"
            child = subprocess.run([sys.executable, __file__, *common, "--engine", engine, "--save", str(save)],
                                   capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"{engine} failed:\n{child.stderr}")
            seconds = json.loads(child.stdout.strip().splitlines()[-1])["seconds"]
            results[ENGINES[engine][0] or hf_label()] = (np.load(save), seconds)

    reference = next(iter(results.values()))[0].astype(np.float64)
    print("\n| engine | texts/s | seconds | max abs diff from the first row |\n|---|---:|---:|---:|")
    for name, (vectors, seconds) in results.items():
        print(f"| {name} | {args.n / seconds:.2f} | {seconds:.2f} | {np.abs(vectors - reference).max():.3g} |")


if __name__ == "__main__":
    main()
