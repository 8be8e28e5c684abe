"""optkit.quantization: int4 packing, the half-step error bound, single-sign groups, unbiased
stochastic rounding, byte counts; and Q-GaLore's quantised basis in GaLoreAdamW (resume, bytes)."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optkit.quantization import (
    GroupQuantized,
    dequantize,
    load_quantized,
    pack_int4,
    quantize,
    quantized_nbytes,
    store_quantized,
    unpack_int4,
)

# float32 arithmetic in ``offset + code · scale``: a product and a sum, each rounded once, relative
# to the group's magnitude; 4 ulps of max |x| covers both with room.
ULPS = 4 * torch.finfo(torch.float32).eps


def _values(shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _per_value(per_group, group_size, numel):
    """A per-group quantity repeated over its group's values, cut to the tensor's length."""
    return per_group.double().repeat_interleave(group_size)[:numel]


def _half_step_bound(x, q, bits, group_size):
    """``scale / 2`` of each value's group, plus float32 rounding relative to the group's largest magnitude."""
    largest = torch.maximum(q.offset.abs(), (q.offset + q.scale * (2**bits - 1)).abs())
    return _per_value(q.scale, group_size, x.numel()) / 2 + ULPS * _per_value(largest, group_size, x.numel())


def _assert_at_most(error, bound):
    excess = error.reshape(-1) - bound
    assert torch.all(excess <= 0), f"{int((excess > 0).sum())} values beyond the bound, by up to {float(excess.max())}"


def test_pack_puts_the_even_index_in_the_low_nibble_and_unpack_inverts_it():
    codes = torch.tensor([1, 2, 15, 0], dtype=torch.uint8)
    torch.testing.assert_close(pack_int4(codes), torch.tensor([0x21, 0x0F], dtype=torch.uint8), rtol=0, atol=0)
    random = torch.randint(0, 16, (2 * 517,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    packed = pack_int4(random)
    assert packed.shape == (517,)
    torch.testing.assert_close(unpack_int4(packed), random, rtol=0, atol=0)


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.zeros(5, dtype=torch.uint8), "even length"),
        (torch.tensor([3, 16], dtype=torch.uint8), "0..15"),
        (torch.zeros(4, dtype=torch.int32), "uint8"),
        (torch.zeros(2, 2, dtype=torch.uint8), "1-D"),
    ],
)
def test_pack_refuses_what_it_cannot_pack(codes, match):
    with pytest.raises(ValueError, match=match):
        pack_int4(codes)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    "shape, group_size, dtype",
    [
        ((37, 13), 64, torch.float32),
        ((1001,), 10, torch.float64),
        ((3, 5, 7), 256, torch.bfloat16),
        ((5,), 2, torch.float16),
    ],
)
def test_nearest_rounding_is_within_half_a_step(bits, shape, group_size, dtype):
    x = _values(shape, seed=2, dtype=dtype) * 30
    q = quantize(x, bits, group_size)
    n_groups = -(-x.numel() // group_size)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (n_groups * group_size * bits // 8,)
    assert q.scale.dtype == q.offset.dtype == torch.float32 and q.scale.shape == q.offset.shape == (n_groups,)
    restored = dequantize(q, shape, bits, group_size, dtype=torch.float64)
    assert restored.shape == x.shape
    error = (restored - x.double()).abs().reshape(-1)
    _assert_at_most(error, _half_step_bound(x, q, bits, group_size))
    assert dequantize(q, shape, bits, group_size, dtype=x.dtype).dtype == x.dtype


def _clamped_zero_point_round_trip(x, bits):
    """The usual integer zero point, clamped to the code range: what single-sign groups break."""
    levels = 2**bits - 1
    scale = (x.max() - x.min()) / levels
    zero = torch.clamp(torch.round(-x.min() / scale), 0, levels)
    codes = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (codes - zero) * scale


@pytest.mark.parametrize(
    "group, clamped",
    [
        # [1, 2]: scale 1/15, zero round(-15) -> 0, codes round(15), round(30) -> 15, 15: both decode to 1
        ([1.0, 2.0], [1.0, 1.0]),
        # [-3, -1]: scale 2/15, zero round(22.5) = 22 -> 15, codes -22 + 15 -> 0, -8 + 15 = 7: -2 and -16/15
        ([-3.0, -1.0], [-2.0, -16 / 15]),
    ],
)
def test_single_sign_groups_keep_their_values(group, clamped):
    x = torch.tensor(group)
    restored = dequantize(quantize(x, 4, 2), (2,), 4, 2)
    # the endpoints are the group's minimum and minimum + 15 · scale: exact up to float32 rounding
    torch.testing.assert_close(restored, x, rtol=0, atol=float(ULPS * 3))
    # the clamped zero point misses one endpoint by 1.0, thirty and fifteen times the half step
    np.testing.assert_allclose(_clamped_zero_point_round_trip(x.double(), 4).numpy(), clamped, rtol=1e-12)


@pytest.mark.parametrize("bits", [4, 8])
def test_single_sign_and_constant_groups_in_one_tensor(bits):
    x = torch.tensor([1.0, 2.0, 1.5, 1.25, -3.0, -1.0, -2.5, -1.1, 3.0, 3.0, 3.0, 3.0, -7.0, -7.0])
    q = quantize(x, bits, 4)
    restored = dequantize(q, x.shape, bits, 4, dtype=torch.float64)
    _assert_at_most((restored - x.double()).abs(), _half_step_bound(x, q, bits, 4))
    # constant groups (the third, and the padded last one) have scale 0 and decode exactly
    torch.testing.assert_close(q.scale[2:], torch.zeros(2), rtol=0, atol=0)
    torch.testing.assert_close(restored[8:], x[8:].double(), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(bits):
    draws, group_size = 20000, 8
    x = torch.tensor([-1.0, -0.37, 0.0, 0.123, 0.5, 0.77, 0.9, 1.0])
    # every row is the same group: one call makes 20000 independent draws of each value
    q = quantize(
        x.expand(draws, group_size), bits, group_size, stochastic=True, generator=torch.Generator().manual_seed(3)
    )
    restored = dequantize(q, (draws, group_size), bits, group_size, dtype=torch.float64)
    step = float(q.scale[0])
    # a neighbour: within one step of x (the next code beyond is at least a step further)
    assert torch.all((restored - x.double()).abs() <= step * (1 + 1e-6))
    # unbiased: the variance of a two-point draw is step² p(1 − p) ≤ (step / 2)², the mean within 4σ/√N
    np.testing.assert_allclose(restored.mean(dim=0).numpy(), x.double().numpy(), rtol=0, atol=4 * step / 2 / draws**0.5)
    # both neighbours occur for a value between codes (not nearest rounding in disguise)
    assert len(torch.unique(restored[:, 1])) == 2
    again = quantize(
        x.expand(draws, group_size), bits, group_size, stochastic=True, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(again.codes, q.codes, rtol=0, atol=0)


@pytest.mark.parametrize("bits, code_bytes", [(4, 512), (8, 1024)])
def test_bytes_are_the_codes_and_eight_per_group(bits, code_bytes):
    # 1000 values in groups of 64: 16 groups, 1024 padded codes; int4 packs them in 512 bytes
    q = quantize(_values((1000,)), bits, 64)
    assert quantized_nbytes(q) == code_bytes + 8 * 16


def test_empty_tensor_round_trips():
    q = quantize(torch.zeros(0, 3), 4, 8)
    assert quantized_nbytes(q) == 0
    assert dequantize(q, (0, 3), 4, 8).shape == (0, 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: quantize(torch.ones(4), 3, 2), "bits must be one of 4, 8"),
        (lambda: quantize(torch.ones(4), 8, 0), "group_size must be an integer >= 1"),
        (lambda: quantize(torch.ones(4), 4, 3), "group_size must be even for bits=4"),
        (lambda: quantize(torch.ones(4, dtype=torch.int64), 8, 2), "x must be a floating-point"),
        (lambda: dequantize(quantize(torch.ones(4), 8, 2), (5,), 8, 2), r"q.codes must be uint8 of shape \(6,\)"),
        (lambda: dequantize(quantize(torch.ones(4), 8, 2), (4,), 4, 2), r"q.codes must be uint8 of shape \(2,\)"),
        (
            lambda: dequantize(
                GroupQuantized(torch.zeros(4, dtype=torch.uint8), torch.ones(1), torch.ones(2)), (4,), 8, 2
            ),
            r"q.scale must have shape \(2,\)",
        ),
    ],
)
def test_bad_arguments_raise_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_stored_state_loads_weights_only_and_reads_back():
    x = _values((40, 6), seed=4)
    state = {}
    store_quantized(state, "basis", x, 4, 16)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert sorted(loaded) == ["basis_bits", "basis_codes", "basis_group", "basis_offset", "basis_scale"]
    torch.testing.assert_close(
        load_quantized(loaded, "basis", x.shape), load_quantized(state, "basis", x.shape), rtol=0, atol=0
    )


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_cuda_matches_the_cpu(bits):
    x = _values((300, 7), seed=5)
    cpu = quantize(x, bits, 64)
    cuda = quantize(x.cuda(), bits, 64)
    assert cuda.codes.is_cuda
    torch.testing.assert_close(cuda.codes.cpu(), cpu.codes, rtol=0, atol=0)
    # the same float32 operations; min/max reductions are exact, the division may differ by an ulp
    torch.testing.assert_close(dequantize(cuda, x.shape, bits, 64).cpu(), dequantize(cpu, x.shape, bits, 64))


# ------------------------------------------------------- Q-GaLore's quantised basis in the optimizers
def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Tanh(), torch.nn.Linear(40, 6))


def _train(model, optimizer, batches):
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_galore_with_a_4_bit_basis_resumes_bit_for_bit_from_a_weights_only_checkpoint(tmp_path):
    from solvers.lowrank import GaLoreAdamW
    from solvers.lowrank.param_groups import galore_param_groups

    generator = torch.Generator().manual_seed(6)
    batches = [(torch.randn(16, 24, generator=generator), torch.randn(16, 6, generator=generator)) for _ in range(6)]

    def build():
        model = _model()
        groups = galore_param_groups(
            model, "all-linear", rank=3, update_proj_gap=2, moments="rotate", proj_bits=4, proj_group_size=32
        )
        return model, GaLoreAdamW(groups, lr=1e-2, weight_decay=0.01)

    model, optimizer = build()
    _train(model, optimizer, batches)
    first, first_optimizer = build()
    _train(first, first_optimizer, batches[:3])
    torch.save({"model": first.state_dict(), "opt": first_optimizer.state_dict()}, tmp_path / "ckpt.pt")
    resumed, resumed_optimizer = build()
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["opt"])
    projector = resumed_optimizer.state[resumed[0].weight]["projector"]
    assert projector["basis_codes"].dtype == torch.uint8 and projector["basis_scale"].dtype == torch.float32
    _train(resumed, resumed_optimizer, batches[3:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_galore_counts_the_packed_basis_bytes():
    from solvers.lowrank import GaLoreAdamW
    from solvers.lowrank.param_groups import galore_param_groups

    model = _model()
    optimizer = GaLoreAdamW(galore_param_groups(model, "all-linear", rank=4, proj_bits=4, proj_group_size=64), lr=1e-3)
    _train(model, optimizer, [(torch.randn(8, 24), torch.randn(8, 6))])
    # (40, 24) weight: right side, basis (24, 4) = 96 values, 2 groups of 64: 64 code bytes + 2 · 8;
    # (6, 40) weight: left side, basis (6, 4) = 24 values, one (padded) group: 32 code bytes + 8
    assert optimizer.state_nbytes()["projector"] == (64 + 16) + (32 + 8)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"proj_bits": 2}, "proj_bits must be one of"),
        ({"proj_bits": 4, "proj_group_size": 33}, "even with proj_bits=4"),
    ],
)
def test_bad_basis_storage_options_raise_in_the_optimizer_and_the_recipe(options, match):
    import optkit
    from solvers.lowrank import GaLoreAdamW

    with pytest.raises(ValueError, match=match):
        GaLoreAdamW([torch.nn.Parameter(torch.zeros(4, 3))], rank=2, **options)
    with pytest.raises(ValueError, match=match):
        optkit.get_solver("galore-adamw", **options)
