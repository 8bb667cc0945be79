"""albert_ref.testing.compare on hand-made arrays: each thing the report promises to say
(worst position, padding left out, ULP distances, NaN/inf, shapes, dtypes, bits)."""
import numpy as np
import pytest

from albert_ref.testing import assert_close, assert_equal_bits, compare, ulp_distance
from albert_ref.testing.compare import ulp_histogram

F32 = np.float32


def test_ulp_distance_counts_floats_between():
    one = F32(1)
    assert ulp_distance(one, np.nextafter(one, F32(2))) == 1
    assert ulp_distance(F32(-0.0), F32(0.0)) == 0
    smallest = F32(1e-45)  # the smallest subnormal: -s, -0/+0, +s
    assert ulp_distance(-smallest, smallest) == 2
    assert ulp_distance(F32(-1), F32(1)) == 2 * ulp_distance(F32(0), F32(1))
    # a float64 side is rounded to float32 first; two float64 sides count float64 ulps
    assert ulp_distance(F32(1), np.float64(1) + 1e-12) == 0
    assert ulp_distance(np.float64(1), np.nextafter(1.0, 2.0)) == 1


def test_ulp_histogram_uses_power_of_two_buckets():
    assert ulp_histogram(np.array([0, 1, 2, 3, 4, 7, 8, 2 ** 20])) == [
        ("0", 1), ("1", 1), ("2-3", 2), ("4-7", 2), ("8-15", 1), ("2^20-2^21", 1)]
    merged = ulp_histogram(2 ** np.arange(20), max_buckets=4)
    assert merged == [("1", 1), ("2-3", 1), ("4-7", 1), (">=8", 17)]


@pytest.fixture
def padded_pair():
    expected = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(F32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    actual = expected.copy()
    actual[1, 2, 3] += F32(0.5)
    actual[1, 4, :] = 99  # a padded position: not the model's business
    return actual, expected, mask


def test_report_names_the_worst_position_and_leaves_out_padding(padded_pair):
    actual, expected, mask = padded_pair
    report = compare(actual, expected, input_mask=mask, name="sequence_output")
    r = report["sequence_output"]
    assert not report and (r.failures, r.compared, r.excluded) == (1, 32, 8)
    assert r.max_abs_at == r.first_failure == (1, 2, 3) and r.max_abs == pytest.approx(0.5)
    text = str(report)
    assert "max abs error 0.5 at [batch=1, token=2, dim=3]" in text
    assert "beyond tolerance by batch: [0, 1]" in text and "8 padded excluded" in text
    assert compare(actual, expected, input_mask=mask, include_padding=True)["array"].failures == 5
    assert compare(actual, expected)["array"].failures == 5  # no mask: everything counts


def test_nan_and_inf_mismatches():
    expected = np.array([1.0, np.nan, np.inf, np.inf, 2.0], F32)
    actual = np.array([np.nan, np.nan, np.inf, -np.inf, 2.0], F32)
    r = compare(actual, expected)["array"]
    assert (r.nonfinite_mismatches, r.failures, r.first_nonfinite_mismatch) == (2, 2, (0,))
    assert r.compared == 5 and r.max_abs == 0  # errors are taken over the finite pairs only


def test_equal_bits_leaves_nan_payloads_alone():
    """The contract promises NaN where the reference has NaN, not which NaN."""
    quiet, other = np.array([np.nan], F32), np.array([0x7FC00123], np.uint32).view(F32)
    assert quiet.view(np.uint32) != other.view(np.uint32)
    assert_equal_bits(np.array([1.0, *other, -0.0], F32), np.array([1.0, *quiet, -0.0], F32))
    for actual in ([1.0, 1.0, -0.0], [1.0, *quiet, 0.0]):  # a number for the NaN; +0 for -0
        with pytest.raises(AssertionError):
            assert_equal_bits(np.array(actual, F32), np.array([1.0, *quiet, -0.0], F32))


def test_shapes_and_dtypes():
    a = np.zeros((2, 3), F32)
    report = compare(a, np.zeros((2, 4), F32))
    assert not report and "shape [2, 3] differs from expected [2, 4]" in str(report)
    assert compare(a, np.zeros((2, 3)))  # float32 against float64 is the usual case ...
    assert "float32 vs float64" in str(compare(a, np.zeros((2, 3))))  # ... and always shown
    assert not compare(a, np.zeros((2, 3)), check_dtype=True)
    with pytest.raises(AssertionError, match="dtype float32 differs from expected float64"):
        assert_equal_bits(a, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        compare(np.zeros(3, np.int32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="input_mask has shape"):
        compare(np.zeros((2, 3, 4), F32), np.zeros((2, 3, 4), F32), input_mask=np.ones((2, 4)))


def test_tolerances():
    e = np.ones(4, F32)
    a = e + np.array([0, 1e-6, 1e-5, 1e-3], F32)
    assert compare(a, e)["array"].failures == 1  # float32 defaults: rtol 1e-4, atol 1e-5
    assert compare(a.astype(np.float64), e.astype(np.float64))["array"].failures == 3  # float64: rtol 1e-9
    assert compare(a, e, rtol=0, atol=2e-5)["array"].failures == 1
    assert compare(a, e, max_ulp=100)["array"].failures == 1  # 1e-5 is 84 ulps at 1.0
    assert compare(a, e, max_ulp=100, atol=1e-2)  # either criterion passes an element
    assert "rtol=0 atol=0.01 or max_ulp=100" in str(compare(a, e, max_ulp=100, atol=1e-2))


def test_equal_bits_is_stricter_than_zero_ulps():
    a, e = np.array([-0.0, 1.0], F32), np.array([0.0, 1.0], F32)
    assert compare(a, e, max_ulp=0)
    with pytest.raises(AssertionError, match="bit-exact"):
        assert_equal_bits(a, e)
    assert assert_equal_bits(e.copy(), e)


def test_dicts_of_outputs_localise_the_first_bad_layer():
    rng = np.random.default_rng(1)
    expected = {"hidden_states": rng.standard_normal((3, 2, 4, 8)), "pooled_output": rng.standard_normal((2, 8))}
    actual = {"hidden_states": expected["hidden_states"].copy(), "extra": np.zeros(1)}
    actual["hidden_states"][2:, 1] += 1e-3
    with pytest.raises(AssertionError) as error:
        assert_close(actual, expected)
    text = str(error.value)
    assert text.startswith("albert-ref compare: FAIL: hidden_states differ; missing from actual: pooled_output")
    assert "first at [layer=2, batch=1, token=0, dim=0]" in text
    assert "beyond tolerance by layer: [0, 0, 32]" in text
    assert "not compared (not in expected): extra" in text
    with pytest.raises(TypeError):
        compare(actual, expected["pooled_output"])
