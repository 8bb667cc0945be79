"""The `albert-ref` command line."""
from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading

import numpy as np

from albert_ref.cli_options import add_backend_options
from albert_ref.errors import AlbertRefError, CheckFailed
from albert_ref.weights import DEMO_MODEL


def _cmd_convert(args):
    from albert_ref.atomic import check_output_path
    from albert_ref.weights.convert import convert
    check_output_path(args.out)
    model = convert(args.src, args.out, config_path=args.config, spm_path=args.spm,
                    do_lower_case=not args.cased)
    c = model.config
    print(f"wrote {args.out}: {model.provenance.get('source_format', 'unknown source')}, hidden {c.hidden_size}, "
          f"{c.num_hidden_layers} layers, {len(model.tensors)} tensors, "
          f"heads: {', '.join(model.heads) or 'none'}, tokenizer: {'yes' if model.spm_model else 'no'}")
    if model.pipeline:
        print(f"  sentence-embedding pipeline: {model.pipeline.describe()}")


def _load(args):
    import albert_ref
    return albert_ref.load(args.model, backend=args.backend, dtype=args.dtype, threads=args.threads)


def _cmd_run(args):
    from albert_ref.atomic import atomic_output, check_output_path
    from albert_ref.npz_inputs import read_npz
    check_output_path(args.output)
    arrays = read_npz(args.inputs)
    if "input_ids" not in arrays:
        raise AlbertRefError(f"{args.inputs}: has no input_ids array (found: {', '.join(arrays) or 'nothing'})")
    model = _load(args)
    out = model(arrays["input_ids"], arrays.get("input_mask"), arrays.get("segment_ids"),
                hidden_states=args.hidden_states, heads=tuple(args.heads))
    with atomic_output(args.output) as fh:
        np.savez(fh, **out)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))


def _cmd_tokenize(args):
    import albert_ref
    from albert_ref.model import tokenizer_of
    from albert_ref.weights.model_file import read_header
    model_file = read_header(args.model)  # the tokenizer, checked, without reading every tensor
    tok = tokenizer_of(model_file)
    limit = model_file.config.max_position_embeddings
    max_len = limit if args.max_seq_length is None else args.max_seq_length
    if max_len > limit:
        raise albert_ref.InputError(f"--max-seq-length {max_len} exceeds the model's max_position_embeddings {limit}")
    texts = [tuple(args.texts[i:i + 2]) for i in range(0, len(args.texts), 2)] if args.pair else args.texts
    if args.pair and len(args.texts) % 2:
        raise albert_ref.InputError("--pair needs an even number of texts")
    results = []
    for text in texts:
        enc = tok.encode(*(text if args.pair else (text,)), max_seq_length=max_len)
        results.append({"text": text, "pieces": enc.pieces, "input_ids": list(map(int, enc.input_ids)),
                        "segment_ids": list(map(int, enc.segment_ids)), "truncated": enc.truncated})
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], ensure_ascii=False))
    else:
        for r in results:
            print(" ".join(f"{p}:{i}" for p, i in zip(r["pieces"], r["input_ids"])))
            if r["truncated"]:
                print(f"  ({r['truncated']} pieces truncated)", file=sys.stderr)


def _read_checked(path):
    """The model file and its checksum status: a SHA-256 mismatch is reported, not fatal,
    so that `info` can still describe a damaged file."""
    from albert_ref.weights.model_file import ChecksumError, read_model
    try:
        m = read_model(path, verify=True)
    except ChecksumError as exc:
        m = read_model(path, verify=False)
        # The file is damaged: its digest must describe the data it holds, not the
        # checksums it claims, so let the digest hash the data.
        m.checksums, m.tokenizer_checksum = None, None
        return m, f"FAILED: {exc}"
    covered = "the manifest and its digest" if m.format_version >= 2 else "their SHA-256"
    return m, f"OK ({len(m.tensors)} tensors{' and the tokenizer' if m.spm_model else ''} match {covered})"


def _cmd_info(args):
    from albert_ref.weights.model_file import GUARANTEES
    from albert_ref.weights.names import num_parameters
    m, checksums = _read_checked(args.model)
    params, digest = num_parameters(m.config), m.digest
    info = {"file": str(args.model), "config": m.config.to_dict(), "parameters": params,
            "heads": list(m.heads), "tokenizer": None if m.spm_model is None else
            {"bytes": len(m.spm_model), **m.tokenizer_options},
            "pipeline": m.pipeline and m.pipeline.to_dict(),
            "provenance": m.provenance, "digest": digest, "checksums": checksums,
            "format_version": m.format_version, "guarantee": GUARANTEES[m.format_version]}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        c = m.config
        print(f"{args.model}: ALBERT, {params:,} encoder parameters")
        print(f"  embedding {c.embedding_size}, hidden {c.hidden_size}, {c.num_attention_heads} heads of {c.head_size}, "
              f"intermediate {c.intermediate_size}, {c.num_hidden_layers} layers over {c.num_hidden_groups} group(s) "
              f"x {c.inner_group_num} block(s), activation {c.hidden_act}")
        print(f"  vocab {c.vocab_size}, max positions {c.max_position_embeddings}, token types {c.type_vocab_size}")
        print(f"  heads: {', '.join(m.heads) or 'none'}")
        tok = info["tokenizer"]
        print("  tokenizer: " + ("none (token ids only)" if tok is None else
                                 f"sentencepiece {tok['bytes']:,} bytes, {tok['flavour']} preprocessing, "
                                 f"lower-case {tok['do_lower_case']}, keep accents {tok['keep_accents']}"))
        print(f"  pipeline: {m.pipeline.describe() if m.pipeline else 'none (embed defaults: pooled output)'}")
        print("  provenance: " + ", ".join(f"{k} {v if not isinstance(v, dict) else len(v)}"
                                           + (" source file(s)" if isinstance(v, dict) else "")
                                           for k, v in sorted(m.provenance.items())))
        print(f"  digest: {digest}")
        print(f"  checksums: {checksums}")
        print(f"  {GUARANTEES[m.format_version]}")
    if checksums.startswith("FAILED"):
        raise SystemExit(1)


def _cmd_verify(args):
    from albert_ref.model import check_tokenizer
    m, checksums = _read_checked(args.model)
    if checksums.startswith("FAILED"):
        raise CheckFailed(f"{args.model}: checksums {checksums}")
    if m.spm_model is not None:
        try:
            check_tokenizer(m)
        except AlbertRefError as exc:
            raise CheckFailed(f"{args.model}: tokenizer FAILED: {exc}") from None
    note = "" if m.format_version >= 2 else " (format version 1: the config, tokenizer options and tensor names " \
                                            "are not covered by a stored checksum; see `albert-ref info`)"
    print(f"{args.model}: {checksums}{', tokenizer OK' if m.spm_model else ''}; digest {m.digest}{note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albert-ref", description="Bit-reproducible ALBERT inference.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a TF checkpoint, TF-Hub module or Hugging Face model to .h5")
    p.add_argument("src", help="checkpoint prefix, TF-Hub module directory or .tar.gz, or Hugging Face directory")
    p.add_argument("out", help="output .h5 file")
    p.add_argument("--config", help="albert_config.json for TF sources (default: beside the checkpoint / in assets/)")
    p.add_argument("--spm", help="sentencepiece model for TF sources (default: 30k-clean.model beside it)")
    p.add_argument("--cased", action="store_true", help="TF sources: the sentencepiece model is cased (no lower-casing)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("run", help="run the TF-Hub `tokens` signature on ids from an .npz")
    p.add_argument("model")
    p.add_argument("--inputs", required=True, help=".npz with input_ids, input_mask, segment_ids [batch, seq]")
    p.add_argument("--output", required=True, help=".npz to receive sequence_output and pooled_output")
    p.add_argument("--hidden-states", action="store_true", help="also write every layer's output")
    p.add_argument("--heads", nargs="*", default=[], choices=("mlm", "sop"), help="also write pretraining heads' logits")
    add_backend_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("tokenize", help="show the pieces and ids of texts")
    p.add_argument("model")
    p.add_argument("texts", nargs="+")
    p.add_argument("--pair", action="store_true", help="texts are consecutive (A, B) pairs")
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_tokenize)

    from albert_ref.embed import add_embed_parser
    from albert_ref.serve_cli import add_serve_parser
    from albert_ref.testing.cli import add_testing_parsers
    add_embed_parser(sub)
    add_serve_parser(sub)
    add_testing_parsers(sub)

    p = sub.add_parser("info", help="describe a model file and check its checksums")
    p.add_argument("model", nargs="?", default=str(DEMO_MODEL), help="model file (default: the bundled demo model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("verify", help="check every tensor's SHA-256")
    p.add_argument("model", nargs="?", default=str(DEMO_MODEL), help="model file (default: the bundled demo model)")
    p.set_defaults(func=_cmd_verify)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Exit status 0: done; 1: a check found a difference (verify, info, golden --check);
    2: an error (bad arguments, inputs or files; the message names it; nothing is left
    half-written); 130: interrupted (Ctrl-C or SIGTERM)."""
    # A shell starts background jobs with SIGINT ignored, which Python would inherit:
    # Ctrl-C and kill -INT must still stop a long command (and clean up after it), and
    # so must SIGTERM.
    args = build_parser().parse_args(argv)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    from albert_ref.compile_notice import notice_compilation
    from albert_ref.memory import limit_heap_retention
    limit_heap_retention()  # this process is ours: keep freed weight-sized buffers out of the heap
    try:
        # a first run compiles for seconds: say so, and compile on a second core too
        with notice_compilation(helper=getattr(args, "backend", None) == "cpu"):
            args.func(args)
    except CheckFailed as exc:
        print(f"albert-ref: error: {exc}", file=sys.stderr)
        return 1
    except AlbertRefError as exc:
        print(f"albert-ref: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("albert-ref: interrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in handlers.items():  # as they were, for callers in the same process
            signal.signal(signum, handler)
    return 0


def console_main() -> int:
    """The `albert-ref` command: main(), then gc.freeze(), so that the interpreter's last
    garbage collection, on the way out, skips the objects that exist by then. Numba's are
    hundreds of thousands: walking them took ~0.1 s of every run (freed by the exit
    anyway). Not in main(), which programs and tests call in their own processes."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(console_main())
