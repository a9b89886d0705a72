"""to_bytes / from_bytes: exact round trips; truncated or corrupted bytes raise, never crash."""
import struct

import numpy as np
import pytest

import loraquant
from _refs import HEADER_BYTES, lora_like


@pytest.fixture(scope="module")
def blob():
    A, B = lora_like(40, 23, 5, 0.8, seed=9)
    return loraquant.compress(A, B, bits=2.5).to_bytes()


def test_round_trip_is_exact():
    for seed, (m, n, r) in enumerate([(1, 1, 1), (129, 3, 3), (1000, 127, 16)]):
        A, B = lora_like(m, n, r, 0.85, seed=seed)
        q = loraquant.compress(A, B, bits=2.0, group_size=64)
        q2 = loraquant.QuantizedLoRA.from_bytes(q.to_bytes())
        assert q2.to_bytes() == q.to_bytes()
        assert q2.widths == q.widths and q2.shape == q.shape and q2.group_size == 64
        x = np.random.default_rng(seed).standard_normal((3, n)).astype(np.float32)
        assert np.array_equal(q.apply(x), q2.apply(x))


def test_every_truncation_is_rejected(blob):
    for k in range(len(blob)):
        with pytest.raises(loraquant.FormatError):
            loraquant.QuantizedLoRA.from_bytes(blob[:k])


def test_every_single_byte_flip_is_rejected(blob):
    for k in range(len(blob)):
        bad = bytearray(blob)
        bad[k] ^= 0x5A
        with pytest.raises(ValueError):
            loraquant.QuantizedLoRA.from_bytes(bytes(bad))


def test_trailing_bytes_are_rejected(blob):
    with pytest.raises(loraquant.FormatError, match="trailing"):
        loraquant.QuantizedLoRA.from_bytes(blob + b"\0")


def test_huge_declared_sizes_do_not_allocate(blob):
    bad = bytearray(blob)
    struct.pack_into("<Q", bad, 32, 2 ** 62)  # payload_bytes
    with pytest.raises(loraquant.FormatError, match="truncated"):
        loraquant.QuantizedLoRA.from_bytes(bytes(bad))
    bad = bytearray(blob)
    struct.pack_into("<III", bad, 8, 2 ** 31, 2 ** 31, 2 ** 20)  # m, n, r
    with pytest.raises(loraquant.FormatError, match="out of range"):
        loraquant.QuantizedLoRA.from_bytes(bytes(bad))


def test_wrong_version_and_magic(blob):
    bad = bytearray(blob)
    struct.pack_into("<H", bad, 4, 99)
    with pytest.raises(loraquant.FormatError, match="version 99"):
        loraquant.QuantizedLoRA.from_bytes(bytes(bad))
    with pytest.raises(loraquant.FormatError, match="magic"):
        loraquant.QuantizedLoRA.from_bytes(b"XXXX" + blob[4:])
    assert issubclass(loraquant.FormatError, ValueError)


def test_from_bytes_type_error():
    with pytest.raises(TypeError, match="bytes"):
        loraquant.QuantizedLoRA.from_bytes("not bytes")
    assert len(loraquant.compress(*lora_like(8, 8, 2, 0.9, 0)).to_bytes()) > HEADER_BYTES
