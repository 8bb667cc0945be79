"""albert-ref as a test oracle for other ALBERT implementations.

    reference(...)        outputs of the float32 bit contract or the float64 reference
    compare(...)          a Report: errors, ULP distances, where the worst ones are
    assert_close(...), assert_equal_bits(...)
    make_golden / check_golden: SHA-256 digests of the contract outputs
    write_fixtures(...)   every activation as .npy, for ports in other languages

Hypothesis strategies live in albert_ref.testing.strategies (needs the `test` extra);
the pytest plugin (fixture `albert_oracle`, option `--albert-model`) is registered
through the pytest11 entry point. Nothing here imports hypothesis or pytest.
"""
from albert_ref.lazy import lazy_exports
from albert_ref.testing.compare import Report, assert_close, assert_equal_bits, compare, ulp_distance
from albert_ref.testing.oracle import Oracle, OracleError, reference

__all__ = ["CONTRACT_VERSION", "GoldenReport", "Oracle", "OracleError", "Report", "assert_close", "assert_equal_bits",
           "check_golden", "compare", "make_golden", "reference", "ulp_distance", "write_fixtures"]

# golden and fixtures import the kernels (Numba): on first use, so that the CLI's commands
# that run none (its parser imports albert_ref.testing.cli) do not pay for them.
__getattr__, __dir__ = lazy_exports(globals(), {
    **dict.fromkeys(("CONTRACT_VERSION", "GoldenReport", "check_golden", "make_golden"), "albert_ref.testing.golden"),
    "write_fixtures": "albert_ref.testing.fixtures"})
