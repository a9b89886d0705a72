"""Packing, fp16 scales and the group quantizers against plain references; golden bytes."""
import numpy as np
import pytest

from loraquant import _core
from _refs import pack_ref, rtn_minmax_ref, sign_ref, vector_bytes

LENGTHS = [1, 2, 3, 5, 7, 31, 32, 33, 127, 128, 129, 1000, 1023]
WIDTHS = list(range(1, 9))


@pytest.mark.parametrize("width", WIDTHS)
def test_pack_fast_matches_reference_and_bitstream(width):
    rng = np.random.default_rng(width)
    for length in LENGTHS:
        codes = rng.integers(0, 2 ** width, size=length, dtype=np.uint8)
        fast = _core.pack_codes(codes, width, False)
        ref = _core.pack_codes(codes, width, True)
        assert fast == ref, (width, length)
        assert fast == pack_ref(codes, width), (width, length)
        assert np.array_equal(_core.unpack_codes(fast, length, width), codes)


def test_pack_rejects_codes_wider_than_width():
    with pytest.raises(ValueError, match="does not fit"):
        _core.pack_codes(np.array([4], dtype=np.uint8), 2, False)


def test_half_decode_matches_numpy_for_every_pattern():
    pats = np.arange(65536, dtype=np.uint16)
    want = pats.view(np.float16).astype(np.float32)
    got = np.array([_core.half_to_float(int(p)) for p in pats], dtype=np.float32)
    finite = np.isfinite(want)
    assert np.array_equal(got[finite], want[finite])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)])


def test_half_encode_rounds_like_numpy():
    rng = np.random.default_rng(0)
    vals = np.concatenate([
        rng.standard_normal(3000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 3000),
        np.array([0.0, -0.0, 65504, 65519.9, 65520, 1e9, -1e9, 6.1e-5, 5.96e-8, 2.9e-8,
                  3.0e-8, np.inf, -np.inf], dtype=np.float32),
        # exact ties between two halves: round to even
        (np.arange(1, 200, dtype=np.float32) + 0.5) * np.float32(2.0 ** -10) + 1,
    ]).astype(np.float32)
    got = np.array([_core.float_to_half(float(v)) for v in vals], dtype=np.uint16)
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).view(np.uint16)
    assert np.array_equal(got, want)
    assert np.isnan(_core.half_to_float(_core.float_to_half(float("nan"))))


@pytest.mark.parametrize("width", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("group", [1, 3, 128, 4096])
def test_rtn_minmax_matches_reference_exactly(width, group):
    rng = np.random.default_rng(width * 100 + group)
    for length in [1, 3, 127, 129, 1000]:
        x = (rng.standard_normal(length) * 0.03).astype(np.float32)
        unit = _core.choose_unit(float(np.abs(x).max()))
        blk, deq = _core.encode_vector(x, width, group, unit, False)
        assert len(blk) == vector_bytes(length, width, group)
        assert np.array_equal(deq, rtn_minmax_ref(x, width, group, unit)), (length,)
        assert np.array_equal(_core.decode_vector(blk, length, width, group, unit), deq)


@pytest.mark.parametrize("group", [1, 5, 128, 4096])
def test_sign_matches_reference_exactly(group):
    rng = np.random.default_rng(group)
    for length in [1, 3, 127, 129, 1000]:
        x = (rng.standard_normal(length) * 0.03).astype(np.float32)
        unit = _core.choose_unit(float(np.abs(x).max()))
        blk, deq = _core.encode_vector(x, 1, group, unit, True)
        assert np.array_equal(deq, sign_ref(x, group, unit))
        assert np.array_equal(_core.decode_vector(blk, length, 1, group, unit), deq)


# A range search may only lower each group's squared error below min/max RTN; allow
# float32 rounding in the summation order.
SEARCH_TOL = 1e-5


@pytest.mark.parametrize("width", [2, 3, 4])
def test_range_search_never_worse_than_minmax(width):
    rng = np.random.default_rng(7 + width)
    gains = []
    for length in [64, 129, 1000, 4096]:
        x = (rng.standard_normal(length) * 0.03).astype(np.float32)
        unit = _core.choose_unit(float(np.abs(x).max()))
        _, searched = _core.encode_vector(x, width, 128, unit, True)
        plain = rtn_minmax_ref(x, width, 128, unit)
        for beg in range(0, length, 128):
            es = np.sum((x[beg:beg + 128] - searched[beg:beg + 128]).astype(np.float64) ** 2)
            ep = np.sum((x[beg:beg + 128] - plain[beg:beg + 128]).astype(np.float64) ** 2)
            assert es <= ep * (1 + SEARCH_TOL)
            gains.append(ep / max(es, 1e-30))
    # min/max wastes most of a 2-bit grid on Gaussian data, less at more bits
    assert np.median(gains) > {2: 1.3, 3: 1.1, 4: 1.02}[width]


def test_golden_bytes_of_a_block():
    """Pins the vector-block layout: scales as fp16 units, padding, LSB-first codes."""
    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 0.75], dtype=np.float32)
    blk, deq = _core.encode_vector(x, 2, 4, 1.0, False)
    # group 0: lo -1, hi 0.25: delta fp16(1.25/3) = 0x36AB, zmin fp16(-1) = 0xBC00
    # group 1: lo 0.5, hi 1.0: delta fp16(0.5/3) = 0x3155, zmin fp16(0.5) = 0x3800
    # codes 0,1,2,3 | 0,3,2 -> bits 00 01 10 11 00 11 10 = 0x2CE4 (LSB first)
    assert blk.hex() == "ab3600bc55310038" + "e42c0000"
    assert len(blk) == 12
    blk1, _ = _core.encode_vector(np.array([1.0, -2.0, 3.0], dtype=np.float32), 1, 128, 0.5, False)
    # alpha = mean |x| = 2 -> 4 units -> fp16 0x4400; pad to 4; codes 1,0,1 = 0b101
    assert blk1.hex() == "00440000" + "05000000"


def test_golden_module_decodes_by_the_documented_formula():
    """A module written by hand, byte by byte, from format.h alone."""
    import struct
    import zlib
    m, n, r, group = 3, 2, 2, 2
    # b_width, a_width, b_shift, a_shift (r = 2 each), then the unit
    payload = bytes([2, 0,  2, 0,  0, 0,  1, 0]) + struct.pack("<f", 0.5)
    # component 0 at width 2, b (len 3, groups of 2): 2 groups x {delta, zmin}
    payload += struct.pack("<4e", 1.0, -2.0, 2.0, 0.0)  # in units of 0.5
    payload += struct.pack("<I", 0b11_10_01)            # codes 1, 2, 3
    # a (len 2, one group): delta 1, zmin 0 (units), codes 3, 0
    payload += struct.pack("<2e", 1.0, 0.0) + struct.pack("<I", 0b00_11)
    head = b"LQM1" + struct.pack("<HHIIIIIIQ", 1, 48, m, n, r, group, 0, 0, len(payload))
    header = head + struct.pack("<II", zlib.crc32(payload, zlib.crc32(head)), 0)
    mod = _core.Module.from_bytes(header + payload)
    A, B = mod.dequantize()
    # b: unit 0.5 -> group 0 delta .5 zmin -1: codes 1, 2 -> -0.5, 0.0; group 1 delta 1 zmin 0: 3 -> 3
    assert np.array_equal(B[:, 0], np.array([-0.5, 0.0, 3.0], dtype=np.float32))
    assert np.array_equal(A[0], np.array([1.5, 0.0], dtype=np.float32))
    assert np.array_equal(B[:, 1], np.zeros(3, dtype=np.float32))
    assert mod.widths == [(2, 2), (0, 0)] and mod.nbytes == len(payload)
    assert mod.to_bytes() == header + payload


def test_simd_kernels_give_the_reference_bytes():
    """The quantizer's SIMD kernels (build_info()['kernels'], 'avx2' where the CPU has it)
    and the scalar reference produce the same bytes, pair by pair and under a shared budget."""
    import loraquant
    from loraquant.synthetic import make_pair
    assert loraquant.build_info()["kernels"] in ("avx2", "reference")
    pairs = {f"p{k}": (*make_pair(m, n, r, seed=k), 0.5)
             for k, (m, n, r) in enumerate([(1, 3, 1), (127, 129, 16), (1000, 7, 5), (300, 2048, 8)])}

    def run():
        out = [q.to_bytes() for q in loraquant.compress_adapter(pairs, bits=2.0).values()]
        for A, B, s in pairs.values():
            for bits in (1.0, 3.0, 6.0):
                out.append(loraquant.compress(A, B, bits=bits, scaling=s, group_size=7).to_bytes())
        return out

    fast = run()
    _core.use_reference_kernels(True)
    try:
        ref = run()
    finally:
        _core.use_reference_kernels(False)
    assert fast == ref
