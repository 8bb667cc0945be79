"""`albert-ref golden` (write or check golden digests) and `albert-ref fixtures`."""
from __future__ import annotations

import sys

from albert_ref.atomic import atomic_output, check_output_path
from albert_ref.errors import AlbertRefError
from albert_ref.testing.inputs import load_inputs
from albert_ref.testing.oracle import CONTRACT_BACKENDS, PRECISIONS, Oracle


# The commands import golden and fixtures themselves: those import the kernels (Numba),
# which every other command would pay for while its parser is built.
def _cmd_golden(args):
    from albert_ref.testing.golden import GoldenMismatch, check_golden, dumps, make_golden
    if args.check:
        if args.inputs or args.output:
            raise AlbertRefError("--check takes the inputs from the golden file; drop --inputs/--output")
        report = check_golden(args.check, args.model, backend=args.backend)
        if not report.ok:
            raise GoldenMismatch(f"{args.check}: {report}")
        print(f"{args.check}: {report}")
        return
    if args.model is None or args.inputs is None:
        raise AlbertRefError("give MODEL.h5 and --inputs in.npz to make a golden, or --check golden.json")
    if args.output:
        check_output_path(args.output)
    text = dumps(make_golden(Oracle(args.model, args.backend), *load_inputs(args.inputs)))
    if args.output:
        with atomic_output(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def _cmd_fixtures(args):
    from albert_ref.testing.fixtures import write_fixtures
    inputs = load_inputs(args.inputs) if args.inputs else ()
    manifest = write_fixtures(args.model, args.outdir, *inputs, precision=args.precision)
    print(f"wrote {args.outdir}: {len(manifest['activations'])} activations, "
          f"{', '.join(manifest['outputs'])} ({args.precision}), manifest.json")


def add_testing_parsers(sub):
    p = sub.add_parser("golden", help="write golden SHA-256 digests of the float32 contract outputs, or check them",
                       description="`golden MODEL.h5 --inputs in.npz > golden.json` writes; "
                                   "`golden --check golden.json [MODEL.h5]` recomputes and compares (exit 1 if any "
                                   "digest differs). The model defaults to the bundled demo model when checking.")
    p.add_argument("model", nargs="?", help="model .h5 file")
    p.add_argument("--inputs", help=".npz with input_ids [batch, seq] and optionally input_mask, segment_ids")
    p.add_argument("--check", metavar="GOLDEN_JSON", help="check this golden file instead of writing one")
    p.add_argument("--output", "-o", help="write the golden file here (atomically) instead of to stdout")
    p.add_argument("--backend", choices=CONTRACT_BACKENDS, default="cpu",
                   help="contract kernels to run (they agree bit for bit; default cpu)")
    p.set_defaults(func=_cmd_golden)

    p = sub.add_parser("fixtures", help="write inputs, outputs and every intermediate activation as .npy files",
                       description="Writes OUTDIR/{inputs,activations,outputs}/*.npy and OUTDIR/manifest.json "
                                   "(shapes, dtypes, digests, computation order), for ports in other languages "
                                   "to check themselves op by op. OUTDIR must not exist or be empty.")
    p.add_argument("model", help="model .h5 file")
    p.add_argument("outdir", help="directory to create")
    p.add_argument("--inputs", help=".npz with input_ids [and input_mask, segment_ids] (default: a small seeded batch)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32: the bit contract (default); float64: the NumPy reference")
    p.set_defaults(func=_cmd_fixtures)
