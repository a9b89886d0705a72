"""CUDA adapter path: kernels against the CPU reference, and the host half everywhere.

Runs anywhere: the build flags, the device registry (descriptors, layout), the
kernels' own source run by the host emulation (cpp/cuda/emu/simt.h) against apply_ref,
errors without a device, and the ops' fake implementations. Needs a GPU (skipped, with
the reason, without one): every kernel on the device against apply_ref (dequantize,
then a double-precision matmul).
"""
import os
import shutil

import numpy as np
import pytest

import loraquant
from loraquant import _core

try:
    import torch
except ImportError:
    torch = None

# The kernels decode bit-identical weights (lq_cuda_entry mirrors decode_vector); what
# differs is the order and precision of the sums, against max|ref| + max|y before|:
F32_TOL = 1e-4    # fp32 kernels: fp32 sums split over warps and slices, n <= 9000
F16_TOL = 1e-2    # fp16: y rounds to fp16 (2^-11); tensor cores also round weights and t to fp16
BF16_TOL = 6e-2   # bf16: as fp16 with an 8-bit significand (2^-8)

KERNELS = bool(_core.cuda_build()["kernels"])


def _gpu_reason():
    if torch is None:
        return "torch is not installed"
    from loraquant import cuda_ops
    return cuda_ops.why_unavailable()


GPU_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a CUDA GPU: {GPU_REASON}")


def make_q(rng, m, n, r, k=0):
    """A compressed module with live components, its widths and group sizes varied by k."""
    A = rng.standard_normal((r, n)) / np.sqrt(n)
    B = rng.standard_normal((m, r))
    group = (128, 48, 100, 64)[k % 4]
    if min(m, n) < 8 or k % 3 == 0:  # paper mode keeps components that a budget would drop
        return loraquant.compress(A, B, rho=0.5 + 0.1 * (k % 4), high_bits=2 + k % 7, group_size=group)
    return loraquant.compress(A, B, bits=(1.5, 2.0, 3.0, 5.0)[k % 4], group_size=group)


def ref_rows(qs, idx, x32):
    """apply_ref per token: rows with idx outside [0, len(qs)) stay 0."""
    y = np.zeros((x32.shape[0], qs[0].shape[0]))
    for a in np.unique(idx):
        if 0 <= a < len(qs):
            rows = idx == a
            y[rows] = qs[a].core.apply(x32[rows], True)
    return y


# ---- runs everywhere --------------------------------------------------------------

def test_build_flags_match_what_cmake_found():
    cfg = _core.cuda_build()
    built = loraquant.build_info()["cuda"]
    assert built == cfg["kernels"]
    request = cfg["request"].upper()
    if request == "OFF":
        assert not built
    elif request == "ON":
        assert built
    else:  # AUTO: built exactly when CMake found a CUDA compiler
        assert built == bool(cfg["compiler"])
        if shutil.which("nvcc") and "LORAQUANT_EXPECT_CUDA" not in os.environ:
            assert built, "nvcc is on PATH but the AUTO build has no CUDA kernels"
    if built:
        assert os.path.exists(cfg["compiler"]), cfg
        assert cfg["archs"], cfg
        if cfg["archs_default"]:
            assert cfg["archs"] == "80-real,89-real,90a-real,90-virtual", cfg["archs"]
    expect = os.environ.get("LORAQUANT_EXPECT_CUDA")
    if expect is not None:
        assert built == (expect == "1"), f"LORAQUANT_EXPECT_CUDA={expect}, build_info cuda={built}"


def test_device_count_never_raises():
    n = _core.cuda_device_count()
    assert isinstance(n, int) and n >= 0
    if not KERNELS:
        assert n == 0 and not _core.cuda_build()["archs"]


@pytest.mark.skipif(_core.cuda_device_count() > 0,
                    reason="a device is present: a launch there is tested by the GPU tests")
def test_launch_without_device_raises():
    info = (1, 4, 5, 3, 32)
    with pytest.raises(RuntimeError):
        _core.cuda_bgmv(16, info, 16, 16, 16, 1, 0, 16, 0)


def test_unsupported_shape_names_m_n_r():
    info = (1, 7, 5, 2000, 32)  # 2000 live components: more than the kernels take
    if KERNELS:
        with pytest.raises(ValueError, match=r"m=7, n=5, r=2000"):
            _core.cuda_bgmv(16, info, 16, 16, 16, 1, 0, 16, 0)
    else:
        with pytest.raises(RuntimeError, match="no CUDA kernels"):
            _core.cuda_bgmv(16, info, 16, 16, 16, 1, 0, 16, 0)


SHAPES = [(1, 3), (3, 1), (127, 129), (129, 127), (1000, 3), (3, 1000)]


@pytest.mark.parametrize("m,n", SHAPES)
def test_registry_decodes_like_dequantize(m, n):
    rng = np.random.default_rng(m * 7919 + n)
    qs = [make_q(rng, m, n, r, k) for k, r in enumerate((1, 3, 16, 64, 5))]
    cores = [q.core for q in qs]
    for k, q in enumerate(qs):
        A, B = _core.cuda_registry_decode(cores, k)
        A0, B0 = q.core.dequantize()
        assert np.abs(A0).max() > 0
        np.testing.assert_array_equal(A, A0)  # bit-identical: same decode, same arithmetic
        np.testing.assert_array_equal(B, B0)


MODULE_DT = np.dtype([("m", "<u4"), ("n", "<u4"), ("r", "<u4"), ("live", "<u4"),
                      ("comp_begin", "<u4"), ("unit", "<f4"), ("payload", "<u8")])
COMP_DT = np.dtype([("block", "<u8", 2), ("group", "<u4", 2), ("width", "u1", 2),
                    ("log2_group", "u1", 2), ("slot", "<u4")])


def test_registry_layout():
    rng = np.random.default_rng(5)
    qs = [make_q(rng, 129, 127, r, k) for k, r in enumerate((3, 16, 1, 64))]
    buf, info = _core.cuda_registry([q.core for q in qs])
    count, m, n, max_live, comps_offset = info
    assert (count, m, n) == (4, 129, 127)
    assert MODULE_DT.itemsize == 32 and COMP_DT.itemsize == 32
    mods = np.frombuffer(buf[:32 * count].tobytes(), MODULE_DT)
    lives = [sum(wb > 0 for wb, _ in q.widths) for q in qs]
    assert max_live == max(lives) and comps_offset % 16 == 0
    comps = np.frombuffer(buf[comps_offset:comps_offset + 32 * sum(lives)].tobytes(), COMP_DT)
    for k, q in enumerate(qs):
        d = mods[k]
        assert (d["m"], d["n"], d["r"], d["live"]) == (129, 127, q.rank, lives[k])
        assert d["unit"] == np.float32(q.core.unit) and d["payload"] % 16 == 0
        payload = q.core.payload()
        assert buf[d["payload"]:d["payload"] + len(payload)].tobytes() == payload  # verbatim
        mine = comps[d["comp_begin"]:d["comp_begin"] + d["live"]]
        live_slots = [i for i, (wb, _) in enumerate(q.widths) if wb > 0]
        assert list(mine["slot"]) == live_slots
        assert [tuple(w) for w in mine["width"]] == [tuple(q.widths[i]) for i in live_slots]
        assert (mine["block"] % 4 == 0).all() and (mine["block"] >= d["payload"]).all()
        for c in mine:
            for g, lg, length in zip(c["group"], c["log2_group"], (129, 127)):
                assert 1 <= g <= length
                assert lg == 0xFF or (g == length and 2 ** int(lg) >= length) or 2 ** int(lg) == g


def test_registry_rejects_mixed_shapes():
    rng = np.random.default_rng(6)
    a, b = make_q(rng, 129, 127, 3), make_q(rng, 127, 129, 16, 1)
    with pytest.raises(ValueError, match=r"module 1 \(m=127, n=129, r=16\)"):
        _core.cuda_registry([a.core, b.core])


# ---- the kernels' source on the host emulation: runs everywhere, slowly ------------

NAMES = ("fp32", "fp16", "bf16")
CODE = {"fp32": 0, "fp16": 1, "bf16": 2}
TOL = {"fp32": F32_TOL, "fp16": F16_TOL, "bf16": BF16_TOL}


def rounded(name, a):
    """float32 values as the kernels see them in `name` (round to nearest even)."""
    a = np.ascontiguousarray(a, np.float32)
    if name == "fp16":
        return a.astype(np.float16).astype(np.float32)
    if name == "bf16":
        u = a.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    return a


def check(name, before, after, ref, active):
    """Rows in `active` must hold before + ref (no NaN); the others stay NaN."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    got = after - before
    assert active.any() and np.abs(ref[active]).max() > 0
    assert not np.isnan(got[active]).any(), "NaN left where a result is expected"
    assert np.isnan(after[~active]).all(), "a row without an adapter changed"
    scale = np.abs(ref[active]).max() + np.abs(before[active]).max()
    err = np.abs(got[active] - ref[active]).max()
    assert err <= TOL[name] * scale, f"{name}: max error {err:.3g} > {TOL[name]} x {scale:.3g}"


def host_inputs(rng, tokens, n, m, name, active):
    """x rounded to the dtype; y exact in every dtype (quarters), NaN in inactive rows."""
    x = rounded(name, rng.standard_normal((tokens, n)))
    y = (rng.integers(-8, 9, size=(tokens, m)) / 4).astype(np.float32)
    y[~active] = np.nan
    return x, y


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("r", [1, 3, 16, 64])
def test_emulated_apply_one(m, n, r):
    name = NAMES[(m + n + r) % 3]
    rng = np.random.default_rng(m + 31 * n + 977 * r)
    qs = [make_q(rng, m, n, 3, 1), make_q(rng, m, n, r, r)]
    tokens = 9  # one full tile of 8 tokens and one of 1
    active = np.ones(tokens, bool)
    x, y = host_inputs(rng, tokens, n, m, name, active)
    out = _core.cuda_emulate_apply_one([q.core for q in qs], 1, x, y, CODE[name])
    check(name, y, out, qs[1].core.apply(x, True), active)


@pytest.mark.parametrize("m,n,count", [(129, 1000, 37), (3, 9000, 5)])
def test_emulated_bgmv(m, n, count):
    rng = np.random.default_rng(count)
    qs = [make_q(rng, m, n, (1, 3, 16, 64)[k % 4], k) for k in range(count)]
    tokens = 24
    idx = rng.integers(-1, count + 1, size=tokens).astype(np.int32)  # -1 and `count`: none
    idx[:3] = (-1, count, 0)
    active = (idx >= 0) & (idx < count)
    for name in NAMES:
        x, y = host_inputs(rng, tokens, n, m, name, active)
        out = _core.cuda_emulate_bgmv([q.core for q in qs], idx, x, y, CODE[name])
        check(name, y, out, ref_rows(qs, idx, x), active)


def segments(lengths, adapters, start, tail):
    """seg_start, and each token's adapter (-1 outside every segment)."""
    seg_start = np.cumsum([start] + lengths).astype(np.int32)
    idx = np.full(int(seg_start[-1]) + tail, -1, np.int32)
    for s, a in enumerate(adapters):
        idx[seg_start[s]:seg_start[s + 1]] = a
    return seg_start, idx


@pytest.mark.parametrize("name", NAMES)
def test_emulated_sgmv(name):
    """Short segments on the CUDA-core kernels, 32+ tokens on the tensor-core ones (fp16/bf16)."""
    m, n = 130, 100
    rng = np.random.default_rng(11)
    qs = [make_q(rng, m, n, (64, 3, 16, 1, 70)[k % 5], k) for k in range(6)]
    lengths, adapters = [1, 5, 31, 32, 70, 7, 33], [0, 1, 2, 4, -1, 5, 3]
    seg_start, idx = segments(lengths, adapters, 3, 4)
    active = idx >= 0
    x, y = host_inputs(rng, len(idx), n, m, name, active)
    out = _core.cuda_emulate_sgmv([q.core for q in qs], seg_start, np.array(adapters, np.int32),
                                  max(lengths), x, y, CODE[name])
    check(name, y, out, ref_rows(qs, idx, x), active)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_ops_trace_with_fake_tensors():
    """The fake implementations let tracers (torch.compile, make_fx) see the ops, no GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    import loraquant.cuda_ops  # noqa: F401  (registers the ops)

    info = [1, 6, 8, 3, 32]

    def f(y, x, reg, idx, starts, adapters):
        torch.ops.loraquant.bgmv_add(y, x, reg, info, idx)
        torch.ops.loraquant.sgmv_add(y, x, reg, info, starts, adapters, 4)
        torch.ops.loraquant.apply_one_add(y, x, reg, info, 0)
        return y + 1

    with FakeTensorMode():
        cuda = dict(device="cuda")
        args = (torch.empty(4, 6, dtype=torch.float16, **cuda), torch.empty(4, 8, dtype=torch.float16, **cuda),
                torch.empty(100, dtype=torch.uint8, **cuda), torch.empty(4, dtype=torch.int32, **cuda),
                torch.empty(2, dtype=torch.int32, **cuda), torch.empty(1, dtype=torch.int32, **cuda))
    code = make_fx(f, tracing_mode="fake")(*args).code
    for op in ("bgmv_add", "sgmv_add", "apply_one_add"):
        assert f"loraquant.{op}" in code


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_apply_hook_falls_back_off_gpu():
    from loraquant import cuda_ops
    rng = np.random.default_rng(7)
    q = make_q(rng, 40, 30, 4, 1)
    x = torch.randn(2, 3, 30)
    torch.testing.assert_close(cuda_ops.apply(q, x), q.apply(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_ops.DeviceRegistry([q], device="cpu")
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        cuda_ops.bgmv(torch.zeros(2, 40), x[0], None, torch.zeros(2))


# ---- needs a GPU --------------------------------------------------------------------

TORCH_DT = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _dt(name):
    return getattr(torch, TORCH_DT[name])


def _run_raw(launch, reg, x, y, *args):
    """Launch through _core with a NaN-filled workspace: reading a partial sum that no
    shrink wrote shows up as NaN in y."""
    nbytes = _core.cuda_workspace_bytes(reg.info, x.shape[0])
    ws = torch.full((max(nbytes // 4, 1),), float("nan"), device=x.device)
    stream = torch.cuda.current_stream().cuda_stream
    launch(reg.buffer.data_ptr(), reg.info, *args, ws.data_ptr(), stream)
    torch.cuda.synchronize()


def _check(name, y_before, y_after, ref, active):
    check(name, y_before.double().cpu().numpy(), y_after.double().cpu().numpy(), ref, active)


def _inputs(rng, tokens, n, m, name, active):
    """host_inputs on the GPU (exact in the dtype), and x as the reference sees it."""
    x, y = host_inputs(rng, tokens, n, m, name, active)
    return torch.from_numpy(x).to(_dt(name)).cuda(), torch.from_numpy(y).to(_dt(name)).cuda(), x


GPU_SHAPES = [(1, 3), (3, 1), (127, 129), (129, 127), (1000, 3), (3, 1000), (1000, 1000), (129, 1000)]


@needs_gpu
@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m,n", GPU_SHAPES)
@pytest.mark.parametrize("r", [1, 3, 16, 64])
def test_apply_one_against_reference(name, m, n, r):
    from loraquant import cuda_ops
    rng = np.random.default_rng(m + 31 * n + 977 * r)
    q = make_q(rng, m, n, r, r)
    reg = cuda_ops.DeviceRegistry([q])
    for tokens in (1, 5, 64):
        active = np.ones(tokens, bool)
        x, y, x32 = _inputs(rng, tokens, n, m, name, active)
        before = y.clone()
        _run_raw(_core.cuda_apply_one, reg, x, y, 0, x.data_ptr(), y.data_ptr(), tokens, CODE[name])
        _check(name, before, y, q.core.apply(x32, True), active)


@needs_gpu
@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m,n", [(129, 1000), (1000, 127), (3, 9000)])
def test_bgmv_many_adapters(name, m, n):
    from loraquant import cuda_ops
    rng = np.random.default_rng(37 + m)
    qs = [make_q(rng, m, n, (1, 3, 16, 64)[k % 4], k) for k in range(37)]
    reg = cuda_ops.DeviceRegistry(qs)
    tokens = 300
    idx = rng.integers(-1, 37, size=tokens).astype(np.int32)
    active = idx >= 0
    x, y, x32 = _inputs(rng, tokens, n, m, name, active)
    before = y.clone()
    idx_d = torch.from_numpy(idx).cuda()
    _run_raw(_core.cuda_bgmv, reg, x, y, idx_d.data_ptr(), x.data_ptr(), y.data_ptr(), tokens, CODE[name])
    _check(name, before, y, ref_rows(qs, idx, x32), active)


@needs_gpu
@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
def test_sgmv_segments(name):
    """Short segments take the CUDA cores, those of 32+ tokens the tensor cores (fp16/bf16)."""
    from loraquant import cuda_ops
    m, n = 1000, 129
    rng = np.random.default_rng(11)
    qs = [make_q(rng, m, n, (64, 3, 16, 1, 70)[k % 5], k) for k in range(9)]
    reg = cuda_ops.DeviceRegistry(qs)
    lengths = [1, 5, 31, 32, 64, 100, 7, 250, 33]
    adapters = [0, 1, 2, 3, 4, -1, 5, 8, 7]
    seg_start, idx = segments(lengths, adapters, 3, 4)  # tokens 0..2 and the last 4: none
    tokens = len(idx)
    active = idx >= 0
    x, y, x32 = _inputs(rng, tokens, n, m, name, active)
    before = y.clone()
    starts = torch.from_numpy(seg_start).cuda()
    ads = torch.tensor(adapters, dtype=torch.int32, device="cuda")
    _run_raw(_core.cuda_sgmv, reg, x, y, starts.data_ptr(), ads.data_ptr(), len(adapters),
             max(lengths), x.data_ptr(), y.data_ptr(), tokens, CODE[name])
    _check(name, before, y, ref_rows(qs, idx, x32), active)


@needs_gpu
def test_public_ops_and_apply_hook():
    from loraquant import cuda_ops
    rng = np.random.default_rng(12)
    qs = [make_q(rng, 129, 127, r, k) for k, r in enumerate((16, 3, 64))]
    reg = cuda_ops.DeviceRegistry(qs)
    assert torch.equal(reg.buffer.cpu(), torch.from_numpy(_core.cuda_registry([q.core for q in qs])[0]))
    x = torch.randn(2, 3, 127, device="cuda")
    torch.testing.assert_close(cuda_ops.apply(qs[0], x).cpu(), qs[0].apply(x.cpu()), rtol=1e-4, atol=1e-4)

    x2 = torch.randn(40, 127, device="cuda", dtype=torch.float16)
    idx = torch.tensor([k % 4 - 1 for k in range(40)], device="cuda")  # int64 in: converted
    y = cuda_ops.bgmv(torch.zeros(40, 129, device="cuda", dtype=torch.float16), x2, reg, idx)
    ref = ref_rows(qs, idx.cpu().numpy(), x2.float().cpu().numpy())
    assert np.abs(y.float().cpu().numpy() - ref).max() <= F16_TOL * np.abs(ref).max()

    y2 = cuda_ops.sgmv(torch.zeros(40, 129, device="cuda", dtype=torch.float16), x2, reg,
                       torch.tensor([0, 35, 40]), torch.tensor([2, 1]), 35)
    ref2 = ref_rows(qs, np.array([2] * 35 + [1] * 5), x2.float().cpu().numpy())
    assert np.abs(y2.float().cpu().numpy() - ref2).max() <= F16_TOL * np.abs(ref2).max()

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(y, x):
        return cuda_ops.bgmv(y, x, reg, idx) * 1

    y3 = step(torch.zeros(40, 129, device="cuda", dtype=torch.float16), x2)
    torch.testing.assert_close(y3, y, rtol=0, atol=0)
