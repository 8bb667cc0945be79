"""`albert-ref embed`: text in, ALBERT vectors out, on the CPU.

Plumbing only: the inputs (embed_inputs), the encoder (encoder), resumable file outputs
(embed_job, embed_outputs). With no model named it uses the bundled demo model, so that
`albert-ref embed "hello world"` works straight after install.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from albert_ref.atomic import check_output_path
from albert_ref.cli_options import add_backend_options
from albert_ref.distributed_cli import HELP as CLUSTER_HELP, add_cluster_options, reject_cluster_options, run_cluster
from albert_ref.embed_inputs import INPUT_FORMATS, STDIN, from_arguments, from_file
from albert_ref.embed_job import Settings, progress_bar, run_job
from albert_ref.embed_outputs import KEYED_FORMATS, OUTPUT_FORMATS, json_vectors, output_format
from albert_ref.encoder import POOLINGS, Encoder, truncation_summary
from albert_ref.errors import InputError

DESCRIPTION = """\
Embed texts with an ALBERT model: one float32 vector per text, in input order.

Texts come from TEXT arguments, from --input FILE, or, with neither, from the lines of
stdin. Without --output the vectors are printed as a JSON array of arrays, one vector per
line. With --output the job is resumable: finished chunks are kept in OUTPUT.partial/
and OUTPUT appears, whole, only at the end; if a run is interrupted (Ctrl-C, a kill),
running the same command again resumes it, using a saved chunk only if it matches the
digest recorded for it (any other is recomputed, and you are told).
"""

EPILOG = """\
model:
  --model MODEL.h5 names the model. Without --model, a first TEXT that is an existing
  .h5 file is taken as the model (`albert-ref embed MODEL.h5 TEXT ...`); otherwise the
  bundled demo model is used: random weights, so its vectors mean nothing.

examples:
  albert-ref embed "hello world"
  albert-ref embed --model albert_xlarge_2.h5 --pooling mean --normalize "A cat." "A dog."
  albert-ref embed --model m.h5 --input docs.jsonl --field body --output docs.h5
  albert-ref embed --model m.h5 --input docs.jsonl --field body --id-field doc_id -o docs.jsonl
  albert-ref embed --model m.h5 --input qa.csv --field question --field answer -o qa.npy
  albert-ref embed --model m.h5 --pair "Who wrote it?" "Tolstoy wrote it."
  cat lines.txt | albert-ref embed --model m.h5 -o lines.jsonl

A TEXT that starts with '-' goes after `--`. Row ids (in .h5 and .jsonl outputs) are the
0-based line of a .txt/.jsonl/stdin input (blank lines are skipped but keep their number),
the 0-based data row of a .csv/.tsv, or the position among the TEXT arguments (or pairs).
With --id-field, each row's own id is kept too: "id" of a .jsonl output line (as read;
the row is then "row"), dataset "keys" (text) of an .h5 output.
"""


def add_embed_parser(sub) -> None:
    p = sub.add_parser("embed", help="text to vectors (the bundled demo model unless --model)",
                       description=DESCRIPTION, epilog=EPILOG + "\n" + CLUSTER_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("-m", "--model", help="albert-ref .h5 model file (default: the bundled demo model)")
    p.add_argument("-i", "--input", metavar="FILE",
                   help=".txt (one text per line), .jsonl, .csv or .tsv; '-' for stdin lines")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="read --input as this, whatever its suffix")
    p.add_argument("--field", action="append", metavar="NAME",
                   help=".jsonl field or .csv/.tsv column holding the text (default: text); twice for pairs")
    p.add_argument("--id-field", metavar="NAME",
                   help=".jsonl field or .csv/.tsv column holding each row's id, kept beside its vector "
                        "(needs --output .h5 or .jsonl)")
    p.add_argument("--pair", action="store_true",
                   help="embed (A, B) pairs: TEXT arguments A B A B ..., or lines A<TAB>B")
    p.add_argument("--pooling", metavar="MODE",
                   help=f"one of {', '.join(POOLINGS)}, or token modes joined by commas (cls,mean: concatenated). "
                        "pooled: TF-Hub pooled_output; cls: [CLS] of sequence_output; max / mean / "
                        "mean_sqrt_len_tokens: over its real tokens. Default: the model's pipeline, else pooled")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each vector to unit L2 norm (default: as the model's pipeline says, else not)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help=f"{', '.join(OUTPUT_FORMATS)} (vectors; .h5 and .jsonl also row ids); default: JSON on stdout")
    p.add_argument("--batch-size", type=int, default=32,
                   help="at most this many texts per forward pass (default 32); fewer where that pads less")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="truncate to this many tokens (default: the pipeline's, else the model's maximum); "
                        "truncations are reported")
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="rows per saved chunk of an --output job: the most an interruption can lose (default 1024)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished job for --output and start over")
    add_backend_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run_embed)


def run_embed(args) -> None:
    model, texts = _model_and_texts(args)
    if args.cluster is not None:
        return run_cluster(args, model, texts)
    reject_cluster_options(args)
    inputs = _inputs(args, texts)
    output = None if args.output in (None, STDIN) else Path(args.output)
    if output is not None:
        output_format(output)
        check_output_path(output)
    if inputs.keys is not None and (output is None or output.suffix.lower() not in KEYED_FORMATS):
        raise InputError(f"--id-field needs --output FILE{' or FILE'.join(KEYED_FORMATS)}: "
                         f"{'a .npy file' if output else 'the JSON on stdout'} holds vectors only")
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, not {args.chunk_size}")
    if model is None:
        from albert_ref.weights import DEMO_MODEL
        model = DEMO_MODEL
        print("albert-ref: no --model: using the bundled demo model (random weights: the vectors mean nothing)",
              file=sys.stderr)
    encoder = Encoder(model, backend=args.backend, dtype=args.dtype, threads=args.threads)
    pooling = ",".join(encoder.pooling_modes(args.pooling))
    settings = Settings(pooling, encoder.normalizes(args.normalize), args.batch_size,
                        encoder.max_seq_length(args.max_seq_length), args.chunk_size)
    dim = encoder.output_dim(pooling)
    if inputs.skipped:
        print(f"albert-ref: skipped {inputs.skipped} blank line(s) of {inputs.source}", file=sys.stderr)
    if output is None:
        with progress_bar(len(inputs.texts)) as bar:
            vectors, truncated = encoder.encode_counted(
                inputs.texts, pooling=settings.pooling, normalize=settings.normalize,
                batch_size=settings.batch_size, max_seq_length=settings.max_seq_length, on_progress=bar.update)
        sys.stdout.write(json_vectors(vectors))
    else:
        truncated = run_job(encoder, inputs, settings, output, restart=args.restart,
                            meta={"model": str(model), "source": inputs.source})
        print(f"wrote {output}: {len(truncated)} vectors of {dim} float32, {settings.pooling} pooling"
              f"{', L2-normalized' if settings.normalize else ''}")
    summary = truncation_summary(truncated, settings.max_seq_length)
    if summary:
        print(f"albert-ref: {summary}", file=sys.stderr)


def _model_and_texts(args) -> tuple[str | None, list[str]]:
    """The `embed MODEL.h5 TEXT ...` shorthand: without --model, a first TEXT naming an
    existing .h5 file is the model."""
    texts = list(args.texts)
    if args.model is None and texts and texts[0].lower().endswith(".h5") and Path(texts[0]).is_file():
        return texts[0], texts[1:]
    return args.model, texts


def _inputs(args, texts):
    if args.input is not None:
        if texts:
            raise InputError("give TEXT arguments or --input FILE, not both")
        return from_file(args.input, args.input_format, args.field, args.pair, args.id_field)
    if args.field or args.input_format or args.id_field:
        raise InputError("--field, --id-field and --input-format apply to --input FILE")
    if texts:
        return from_arguments(texts, args.pair)
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("nothing to embed: give TEXT arguments, --input FILE, or pipe lines on stdin")
    return from_file(STDIN, None, None, args.pair)
