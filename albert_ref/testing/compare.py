"""Compare outputs with the oracle's, and say where and by how much they differ.

`compare` never raises on a mismatch: it returns a `Report` (truthy when everything is
within tolerance) whose text gives, per output, the max abs and rel error with the
position where each happens, a histogram of ULP distances, NaN/inf mismatches, and how
the elements beyond tolerance spread over the first axis (the layer of a hidden-states
stack, else the batch row): enough to tell "float32 rounding" from "a bug in block 3".
`assert_close` and `assert_equal_bits` raise AssertionError with that text.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from albert_ref.testing.layout import axis_labels, format_index, real_positions

# (rtol, atol) by the itemsize of the narrower float type of the two sides. float32: ~1000
# ulp of slack for differently ordered sums through a stack of layers (Hugging Face's
# float32 AlbertModel uses about a third of it on the tests' random model); float64: ~1e7 ulp;
# float16: ~10 ulp.
DEFAULT_TOLERANCES = {2: (1e-2, 1e-3), 4: (1e-4, 1e-5), 8: (1e-9, 1e-12)}


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """An element passes when |a - e| <= atol + rtol*|e| or, if max_ulp is set, when it
    is at most max_ulp ulps away; exact: when its bits are equal (any NaN equals any NaN)."""
    rtol: float | None = None
    atol: float | None = None
    max_ulp: int | None = None
    exact: bool = False

    def resolved(self, itemsize: int) -> "Tolerance":
        """Fill in the defaults for a float type when nothing was asked for."""
        if self.exact or self.max_ulp is not None or self.rtol is not None or self.atol is not None:
            return self
        rtol, atol = DEFAULT_TOLERANCES.get(itemsize, DEFAULT_TOLERANCES[8])
        return dataclasses.replace(self, rtol=rtol, atol=atol)

    @property
    def uses_allclose(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def __str__(self):
        if self.exact:
            return "bit-exact"
        parts = [f"rtol={self.rtol or 0:g} atol={self.atol or 0:g}"] if self.uses_allclose else []
        if self.max_ulp is not None:
            parts.append(f"max_ulp={self.max_ulp}")
        return " or ".join(parts)


def narrower(a: np.dtype, b: np.dtype) -> np.dtype:
    return a if a.itemsize <= b.itemsize else b


def ulp_distance(actual, expected) -> np.ndarray:
    """Units in the last place between the two, in the narrower float type (the wider side
    rounded to it), as uint64; +0 and -0 are 0 apart. Meaningless where either is NaN."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    dtype = narrower(actual.dtype, expected.dtype)
    uint = np.dtype(f"u{dtype.itemsize}")
    sign_bit = uint.type(1) << uint.type(8 * dtype.itemsize - 1)

    def sign_and_magnitude(x):
        bits = np.ascontiguousarray(x, dtype=dtype).view(uint)
        return (bits & sign_bit) != 0, (bits & ~sign_bit).astype(np.uint64)

    sa, ma = sign_and_magnitude(actual)
    se, me = sign_and_magnitude(expected)
    return np.where(sa == se, np.maximum(ma, me) - np.minimum(ma, me), ma + me)


def ulp_histogram(ulps: np.ndarray, max_buckets: int = 12) -> list[tuple[str, int]]:
    """Counts in power-of-two buckets (0, 1, 2-3, 4-7, ...), empty ones left out, the
    highest merged into one open-ended bucket so that there are at most max_buckets."""
    bits = np.frexp(np.asarray(ulps, dtype=np.float64).ravel())[1]  # bit length of each distance
    counts = [(i, int(n)) for i, n in enumerate(np.bincount(bits)) if n]
    if len(counts) > max_buckets:
        top = counts[max_buckets - 1:]
        counts = counts[:max_buckets - 1] + [(-top[0][0], sum(n for _, n in top))]
    return [(_bucket_label(i), n) for i, n in counts]


def _bucket_label(i: int) -> str:
    """Bucket i holds distances of bit length i; -i: that and everything above."""
    low = 0 if i == 0 else 2 ** (abs(i) - 1)
    if i < 0:
        return f">={low}" if low < 2 ** 14 else f">=2^{abs(i) - 1}"
    if i <= 1:
        return str(i)
    return f"{low}-{2 * low - 1}" if low < 2 ** 14 else f"2^{i - 1}-2^{i}"


@dataclasses.dataclass
class ArrayReport:
    """The comparison of one array. Positions are indices into the full array."""
    name: str
    actual: tuple[tuple[int, ...], np.dtype]
    expected: tuple[tuple[int, ...], np.dtype]
    tolerance: Tolerance
    problems: list[str] = dataclasses.field(default_factory=list)
    compared: int = 0
    excluded: int = 0
    failures: int = 0
    first_failure: tuple[int, ...] | None = None
    failures_by_first_axis: list[int] = dataclasses.field(default_factory=list)
    nonfinite_mismatches: int = 0
    first_nonfinite_mismatch: tuple[int, ...] | None = None
    max_abs: float = 0.0
    max_abs_at: tuple[int, ...] | None = None
    worst_values: tuple[float, float] | None = None
    max_rel: float = 0.0
    max_rel_at: tuple[int, ...] | None = None
    max_ulp: int = 0
    ulps: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.failures == 0

    def __str__(self):
        (ashape, adtype), (eshape, edtype) = self.actual, self.expected
        shapes = f"{list(ashape)}" if ashape == eshape else f"{list(ashape)} vs {list(eshape)}"
        lines = [f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {adtype} vs {edtype} {shapes}, {self.tolerance}"]
        lines += [f"     {p}" for p in self.problems]
        if self.problems:  # nothing was compared
            return "\n".join(lines)
        ndim = len(ashape)
        where = f"{self.compared:,} compared" + (f", {self.excluded:,} padded excluded" if self.excluded else "")
        if self.failures:
            where += (f"; {self.failures:,} beyond tolerance, first at {format_index(self.first_failure, ndim)}")
        lines.append(f"     {where}")
        if self.nonfinite_mismatches:
            lines.append(f"     {self.nonfinite_mismatches:,} NaN/inf mismatches, first at "
                         f"{format_index(self.first_nonfinite_mismatch, ndim)}")
        if self.max_abs_at is not None:
            a, e = self.worst_values
            digits = 17 if narrower(adtype, edtype).itemsize == 8 else 9  # enough to tell them apart
            lines.append(f"     max abs error {self.max_abs:.3g} at {format_index(self.max_abs_at, ndim)} "
                         f"(actual {a:.{digits}g}, expected {e:.{digits}g})")
            lines.append(f"     max rel error {self.max_rel:.3g} at {format_index(self.max_rel_at, ndim)}")
            lines.append(f"     ulp distance ({narrower(adtype, edtype)}): "
                         + ", ".join(f"{label}: {n:,}" for label, n in self.ulps))
        if self.failures and 1 < len(self.failures_by_first_axis) <= 64:
            lines.append(f"     beyond tolerance by {axis_labels(ndim)[0]}: {self.failures_by_first_axis}")
        return "\n".join(lines)


@dataclasses.dataclass
class Report:
    """The comparison of every output; `bool(report)` is True when all are within tolerance."""
    arrays: list[ArrayReport]
    missing: list[str] = dataclasses.field(default_factory=list)
    not_compared: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and all(a.ok for a in self.arrays)

    def __bool__(self):
        return self.ok

    def __getitem__(self, name: str) -> ArrayReport:
        for array in self.arrays:
            if array.name == name:
                return array
        raise KeyError(name)

    def __str__(self):
        if self.ok:
            head = "OK: " + ", ".join(a.name for a in self.arrays) + " within tolerance"
        else:
            failed = [a.name for a in self.arrays if not a.ok]
            head = "FAIL: " + "; ".join(([f"{', '.join(failed)} differ"] if failed else []) +
                                        ([f"missing from actual: {', '.join(self.missing)}"] if self.missing else []))
        lines = [f"albert-ref compare: {head}"] + [str(a) for a in self.arrays]
        if self.not_compared:
            lines.append(f"not compared (not in expected): {', '.join(self.not_compared)}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<albert-ref Report: {'OK' if self.ok else 'FAIL'}, {len(self.arrays)} array(s)>"


def compare(actual, expected, *, rtol=None, atol=None, max_ulp=None, input_mask=None, include_padding=False,
            check_dtype=False, exact=False, name="array") -> Report:
    """Compare an array, or a dict of arrays (model outputs), with the expected one(s).

    Tolerance: with none of rtol/atol/max_ulp given, the defaults for the narrower float
    type (float32: rtol 1e-4, atol 1e-5; float64: rtol 1e-9, atol 1e-12; float16: rtol
    1e-2, atol 1e-3); otherwise an
    element passes if within atol + rtol*|expected| or within max_ulp ulps. exact: equal
    bits (and equal dtypes), except that NaN payloads are not compared (the contract does
    not promise them). input_mask [batch, seq]: token positions where it is 0 are
    left out of [batch, token, dim] and [layer, batch, token, dim] arrays unless
    include_padding. check_dtype: a dtype difference fails (it is always shown).
    Dicts: every key of `expected` is compared; keys only in `actual` are listed.
    """
    tolerance = Tolerance(rtol, atol, max_ulp, exact)
    mask = None if include_padding else input_mask
    if isinstance(expected, Mapping) != isinstance(actual, Mapping):
        raise TypeError("compare a dict of arrays with a dict, or an array with an array")
    if not isinstance(expected, Mapping):
        return Report([_compare_array(name, actual, expected, tolerance, mask, check_dtype or exact)])
    return Report([_compare_array(k, actual[k], v, tolerance, mask, check_dtype or exact)
                   for k, v in expected.items() if k in actual],
                  missing=[k for k in expected if k not in actual],
                  not_compared=[k for k in actual if k not in expected])


def assert_close(actual, expected, **options) -> Report:
    """compare(), raising AssertionError with the report when anything is out of tolerance."""
    __tracebackhide__ = True  # pytest then shows the caller's line and the report, not this frame
    report = compare(actual, expected, **options)
    if not report.ok:
        raise AssertionError(str(report))
    return report


def assert_equal_bits(actual, expected, *, input_mask=None, include_padding=False, name="array") -> Report:
    """Same dtype, same shape, same bits at every compared position (the contract's
    promise: a NaN where the other has a NaN, of whatever payload)."""
    __tracebackhide__ = True
    return assert_close(actual, expected, exact=True, input_mask=input_mask, include_padding=include_padding,
                        name=name)


def _compare_array(name, actual, expected, tolerance: Tolerance, input_mask, check_dtype) -> ArrayReport:
    a, e = np.asarray(actual), np.asarray(expected)
    for side, x in (("actual", a), ("expected", e)):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}: {side} has dtype {x.dtype}; compare needs floating-point arrays")
    tolerance = tolerance.resolved(narrower(a.dtype, e.dtype).itemsize)
    report = ArrayReport(name, (a.shape, a.dtype), (e.shape, e.dtype), tolerance)
    if a.shape != e.shape:
        report.problems.append(f"shape {list(a.shape)} differs from expected {list(e.shape)}")
    if check_dtype and a.dtype != e.dtype:
        report.problems.append(f"dtype {a.dtype} differs from expected {e.dtype}")
    if report.problems:
        return report

    real = real_positions(a.shape, input_mask)
    keep = np.ones(a.shape, bool) if real is None else np.broadcast_to(real, a.shape)
    report.compared = int(keep.sum())
    report.excluded = keep.size - report.compared
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(e64)
    both_nan = np.isnan(a64) & np.isnan(e64)
    nonfinite_mismatch = keep & ~finite & ~both_nan & (a64 != e64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        diff = np.where(finite, np.abs(a64 - e64), 0.0)
        rel = np.where(diff == 0, 0.0, diff / np.abs(e64))
    ulps = np.where(finite, ulp_distance(a, e), 0)

    if tolerance.exact:
        uint = f"u{a.dtype.itemsize}"
        # NaN payloads are not promised (NUMERICS.md): a NaN equals any NaN, nothing else
        beyond = (np.ascontiguousarray(a).view(uint) != np.ascontiguousarray(e).view(uint)) & ~both_nan
    else:
        within = np.zeros(a.shape, bool)
        if tolerance.uses_allclose:
            within |= diff <= (tolerance.atol or 0) + (tolerance.rtol or 0) * np.abs(e64)
        if tolerance.max_ulp is not None:
            within |= ulps <= tolerance.max_ulp
        beyond = finite & ~within
    failing = keep & (beyond | nonfinite_mismatch)
    report.failures = int(failing.sum())
    if report.failures:
        report.first_failure = _first(failing)
        report.failures_by_first_axis = failing.reshape(a.shape[0], -1).sum(axis=1).tolist() if a.ndim > 1 else []
    report.nonfinite_mismatches = int(nonfinite_mismatch.sum())
    if report.nonfinite_mismatches:
        report.first_nonfinite_mismatch = _first(nonfinite_mismatch)

    considered = keep & finite
    if considered.any():
        report.max_abs_at = _argmax(diff, considered)
        report.max_abs = float(diff[report.max_abs_at])
        report.worst_values = (float(a64[report.max_abs_at]), float(e64[report.max_abs_at]))
        report.max_rel_at = _argmax(rel, considered)
        report.max_rel = float(rel[report.max_rel_at])
        report.max_ulp = int(ulps[considered].max())
        report.ulps = ulp_histogram(ulps[considered])
    return report


def _first(flags: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(flags.ravel())), flags.shape))


def _argmax(values: np.ndarray, where: np.ndarray) -> tuple[int, ...]:
    flat = np.where(where, values, -1.0).ravel()
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(flat)), values.shape))
