"""Inputs: dtypes, strides, containers; bad input gets a clear error naming the problem."""
import numpy as np
import pytest
import torch

import loraquant
from _refs import lora_like

A0, B0 = lora_like(130, 70, 6, 0.8, seed=5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_dtypes_give_the_same_result_as_float64_of_the_same_values(dtype):
    A, B = torch.as_tensor(A0).to(dtype), torch.as_tensor(B0).to(dtype)
    q = loraquant.compress(A, B, bits=2.0)
    q64 = loraquant.compress(A.double().numpy(), B.double().numpy(), bits=2.0)
    assert q.to_bytes() == q64.to_bytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_dtypes(dtype):
    q = loraquant.compress(A0.astype(dtype), B0.astype(dtype), bits=2.0)
    q64 = loraquant.compress(A0.astype(dtype).astype(np.float64), B0.astype(dtype).astype(np.float64), bits=2.0)
    assert q.to_bytes() == q64.to_bytes()


def test_any_strides():
    At = np.asfortranarray(A0)
    Bt = torch.as_tensor(B0.T.copy()).T  # a transposed view
    Bs = np.zeros((B0.shape[0], 2 * B0.shape[1]))
    Bs[:, ::2] = B0
    ref = loraquant.compress(A0, B0, bits=2.0).to_bytes()
    assert loraquant.compress(At, Bt, bits=2.0).to_bytes() == ref
    assert loraquant.compress(A0, Bs[:, ::2], bits=2.0).to_bytes() == ref


BAD = [
    (dict(A=np.ones((4, 8)), B=np.ones((5, 3))), ValueError, "do not chain"),
    (dict(A=np.ones((0, 8)), B=np.ones((5, 0))), ValueError, "empty"),
    (dict(A=np.ones((4, 0)), B=np.ones((5, 4))), ValueError, "empty"),
    (dict(A=np.ones(8), B=np.ones((5, 1))), ValueError, "2-D"),
    (dict(A=np.ones((1, 2, 8)), B=np.ones((5, 1))), ValueError, "2-D"),
    (dict(A=np.full((4, 8), np.nan), B=np.ones((5, 4))), ValueError, "NaN"),
    (dict(A=np.ones((4, 8)), B=np.full((5, 4), np.inf)), ValueError, "Inf"),
    (dict(A=np.ones((4, 8), dtype=np.int32), B=np.ones((5, 4))), TypeError, "dtype"),
    (dict(A=torch.ones(4, 8, dtype=torch.int64), B=torch.ones(5, 4)), TypeError, "dtype"),
    (dict(A=np.ones((4, 8), dtype=np.complex64), B=np.ones((5, 4))), TypeError, "dtype"),
    (dict(A=[[1.0]], B=[[1.0]]), TypeError, "torch.Tensor or numpy"),
    (dict(bits=0), ValueError, "bits"),
    (dict(bits=-1), ValueError, "bits"),
    (dict(bits=16.5), ValueError, "bits"),
    (dict(bits=float("nan")), ValueError, "bits"),
    (dict(bits="2"), TypeError, "bits"),
    (dict(rho=0.9, high_bits=1), ValueError, "high_bits"),
    (dict(rho=0.9, high_bits=9), ValueError, "high_bits"),
    (dict(high_bits=3), ValueError, "paper mode"),
    (dict(group_size=0), ValueError, "group_size"),
    (dict(group_size=-5), ValueError, "group_size"),
    (dict(group_size=2.5), TypeError, "group_size"),
    (dict(rho=0.0), ValueError, "rho"),
    (dict(rho=1.5), ValueError, "rho"),
    (dict(rho=0.9, bits=2.0), ValueError, "either bits"),
    (dict(scaling=float("inf")), ValueError, "scaling"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_input_gets_a_clear_error(kw, exc, msg):
    kw = dict(kw)
    A = kw.pop("A", np.ones((4, 8)))
    B = kw.pop("B", np.ones((5, 4)))
    with pytest.raises(exc, match=msg):
        loraquant.compress(A, B, **kw)


def test_apply_accepts_leading_dims_and_keeps_dtype():
    q = loraquant.compress(A0, B0, bits=3.0)
    x = torch.randn(2, 3, 70, dtype=torch.float64)
    y = q.apply(x)
    assert y.shape == (2, 3, 130) and y.dtype == torch.float64
    Ah, Bh = q.dequantize()
    want = x.float() @ (Bh @ Ah).T
    assert torch.allclose(y.float(), want, rtol=1e-4, atol=1e-6)
    yn = q.apply(np.ones((4, 70), dtype=np.float32))
    assert isinstance(yn, np.ndarray) and yn.shape == (4, 130)


def test_apply_errors():
    q = loraquant.compress(A0, B0, bits=2.0)
    with pytest.raises(ValueError, match="last dimension must be n = 70"):
        q.apply(torch.ones(3, 71))
    with pytest.raises(TypeError, match="floating"):
        q.apply(torch.ones(3, 70, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        q.apply([1.0] * 70)


def test_build_info_reports_what_was_compiled():
    info = loraquant.build_info()
    assert info["version"] == loraquant.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["compiler"] and "eigen" in info
