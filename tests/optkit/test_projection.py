"""optkit.projection: every source × side × shape against dense linear algebra and closed forms."""

import io
import itertools

import numpy as np
import pytest
import scipy.fft

from optkit.linop import dottest

torch = pytest.importorskip("torch")

from optkit import _projection_sources as sources  # noqa: E402
from optkit.projection import AdaptiveGap, FixedGap, Projector, subspace_similarity  # noqa: E402

SHAPES = {"tall": (12, 7), "wide": (7, 12), "square": (9, 9)}
SOURCES = ("svd", "randomized", "dct", "random")


def _grad(shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _projected_dim(shape, side):
    m, n = shape
    return {"left": m, "right": n, "auto": n if m >= n else m}[side]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("side", ["auto", "left", "right"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("rank", [3, 7, 9, 15])
def test_projects_and_back_with_orthonormal_basis(source, side, shape_name, rank):
    shape = SHAPES[shape_name]
    G = _grad(shape)
    projector = Projector(rank, source=source, side=side, scale=0.5)
    state = projector.init_state(shape)
    out = projector.project(state, G, 0)
    assert tuple(out.low.shape) == projector.low_rank_shape(state, shape)
    if rank >= _projected_dim(shape, side):
        assert projector.is_identity(state)
        np.testing.assert_allclose(projector.project_back(state, out.low), 0.5 * G.numpy())
        return
    B = projector.basis(state).double()
    assert B.shape == (_projected_dim(shape, side), rank)
    np.testing.assert_allclose(B.T @ B, np.eye(rank), atol=1e-6)
    left = B.shape[0] == shape[0] and (side == "left" or (side == "auto" and shape[0] < shape[1]))
    expected_low = B.T @ G if left else G @ B
    np.testing.assert_allclose(out.low, expected_low, atol=1e-6)
    expected_back = 0.5 * (B @ B.T @ G if left else G @ B @ B.T)
    np.testing.assert_allclose(projector.project_back(state, out.low), expected_back, atol=1e-6)


def test_auto_side_reduces_the_smaller_dimension_and_is_stored():
    projector = Projector(2)
    tall, wide = projector.init_state((10, 4)), projector.init_state((4, 10))
    assert projector.low_rank_shape(tall, (10, 4)) == (10, 2)
    assert projector.low_rank_shape(wide, (4, 10)) == (2, 10)
    # a square projected gradient (the reference's `reverse_std` bug) keeps its recorded side
    state = Projector(4, side="left").init_state((4, 8))
    assert Projector(4, side="left").low_rank_shape(state, (4, 8)) == (4, 8)


@pytest.mark.parametrize("side", ["left", "right"])
def test_svd_source_spans_the_leading_singular_subspace(side):
    G = _grad((20, 14), seed=1)
    projector = Projector(5, source="svd", side=side)
    state = projector.init_state(G.shape)
    projector.project(state, G, 0)
    B = projector.basis(state).double().numpy()
    U, _, Vt = np.linalg.svd(G.numpy())
    leading = U[:, :5] if side == "left" else Vt[:5].T
    np.testing.assert_allclose(B @ B.T, leading @ leading.T, atol=1e-5)


@pytest.mark.parametrize("power_iters", [0, 2])
def test_randomized_source_recovers_an_exactly_low_rank_gradient(power_iters):
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(40, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 30, generator=gen, dtype=torch.float64)
    projector = Projector(6, source="randomized", side="left", power_iters=power_iters, oversample=4)
    state = projector.init_state(G.shape)
    projector.project(state, G, 0)
    B = projector.basis(state).double().numpy()
    U = np.linalg.svd(G.numpy())[0][:, :6]
    np.testing.assert_allclose(B @ B.T, U @ U.T, atol=1e-5)


def test_randomized_and_random_sources_are_seeded_per_parameter():
    G = _grad((16, 10), seed=4)
    for source in ("randomized", "random"):
        projector = Projector(3, source=source, seed=11)
        a, b, c = (projector.init_state(G.shape, key=k) for k in (0, 0, 1))
        for s in (a, b, c):
            projector.project(s, G, 0)
        assert torch.equal(a["basis"], b["basis"])
        assert not torch.equal(a["basis"], c["basis"])


def test_dct_basis_is_scipys_orthonormal_dct2():
    Q = sources.dct_basis(11, torch.float64, torch.device("cpu")).numpy()
    np.testing.assert_allclose(Q, scipy.fft.dct(np.eye(11), axis=0, norm="ortho").T, atol=1e-12)
    assert sources.dct_basis(11, torch.float64, torch.device("cpu")) is sources.dct_basis(
        11, torch.float64, torch.device("cpu")
    )


@pytest.mark.parametrize("d", [16, 17])
def test_dct_by_fft_equals_the_matrix_product(d):
    G = _grad((d, 5), seed=5)
    Q = sources.dct_basis(d, torch.float64, torch.device("cpu"))
    np.testing.assert_allclose(sources.dct_rows(G), (Q.T @ G).float(), atol=1e-5)


@pytest.mark.parametrize("method", ["fft", "matmul"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_dct_selection_equals_brute_force(method, side):
    G = _grad((24, 18), seed=6)
    projector = Projector(5, source="dct", side=side, dct_method=method)
    state = projector.init_state(G.shape)
    low = projector.project(state, G, 0).low
    oriented = G.numpy() if side == "left" else G.numpy().T
    d = oriented.shape[0]
    energy = {}
    for k in range(d):
        q = np.cos(np.pi * k * (2 * np.arange(d) + 1) / (2 * d)) * np.sqrt((1 if k else 0.5) * 2 / d)
        energy[k] = np.linalg.norm(q @ oriented)
    best = sorted(sorted(energy, key=energy.get, reverse=True)[:5])
    np.testing.assert_array_equal(state["indices"].numpy(), best)
    assert state["indices"].dtype == torch.int32 and "basis" not in state
    B = projector.basis(state).double()
    np.testing.assert_allclose(low, (B.T @ G if side == "left" else G @ B).float(), atol=1e-5)


def test_fixed_gap_refreshes_at_multiples_of_the_gap():
    projector = Projector(2, source="random", refresh=FixedGap(3))
    state = projector.init_state((6, 5))
    changed = [projector.project(state, _grad((6, 5), seed=t), t).changed for t in range(8)]
    assert changed == [False, False, False, True, False, False, True, False]
    assert state["refreshes"] == 3


def test_adaptive_gap_grows_while_the_subspace_is_stable():
    projector = Projector(2, source="svd", refresh=AdaptiveGap(gap=2, threshold=0.9, factor=2, window=2))
    state = projector.init_state((6, 5))
    G = _grad((6, 5), seed=7)
    refreshed = []
    for t in range(20):
        if projector.project(state, G, t).refresh_s > 0:
            refreshed.append(t)
    # first window of two similarities (both 1.0) completes at step 4: gap 2 -> 4, then 4 -> 8
    assert refreshed == [0, 2, 4, 8, 16]
    np.testing.assert_allclose(state["similarities"], [1.0, 1.0], atol=1e-6)


def test_subspace_similarity_ignores_signs_and_rotations():
    B = torch.linalg.qr(_grad((10, 3), seed=8)).Q
    rot = torch.linalg.qr(_grad((3, 3), seed=9)).Q
    np.testing.assert_allclose(subspace_similarity((B @ rot).T @ (-B)), 1.0, atol=1e-12)
    other = torch.linalg.qr(torch.cat([B, _grad((10, 3), seed=10)], dim=1)).Q[:, 3:]
    np.testing.assert_allclose(subspace_similarity(other.T @ B), 0.0, atol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_rotate_moves_moments_into_the_new_basis(side):
    shape = (10, 8) if side == "right" else (8, 10)
    projector = Projector(3, source="random", side=side, refresh=1, moments="rotate")
    state = projector.init_state(shape)
    projector.project(state, _grad(shape), 0)
    B_old = projector.basis(state).double()
    m = _grad(projector.low_rank_shape(state, shape), seed=11)
    out = projector.project(state, _grad(shape, seed=12), 1)
    B_new = projector.basis(state).double()
    moved = projector.transport(out, state, m)
    # the moment's full-space image, projected orthogonally onto the new subspace
    if side == "left":
        np.testing.assert_allclose(B_new @ moved, B_new @ B_new.T @ B_old @ m, atol=1e-6)
    else:
        np.testing.assert_allclose(moved @ B_new.T, m @ B_old.T @ B_new @ B_new.T, atol=1e-6)
    v = m.abs()
    R2 = out.rotation.double() ** 2
    expected = R2 @ v if side == "left" else v @ R2.T
    np.testing.assert_allclose(projector.transport(out, state, v, second=True), expected, atol=1e-6)


def test_reset_and_keep_moment_rules():
    shape = (8, 6)
    for rule, expect_zero in (("reset", True), ("keep", False)):
        projector = Projector(2, source="random", refresh=1, moments=rule)
        state = projector.init_state(shape)
        first = projector.project(state, _grad(shape), 0)
        m = torch.ones(projector.low_rank_shape(state, shape))
        assert projector.transport(first, state, m) is m
        moved = projector.transport(projector.project(state, _grad(shape, seed=1), 1), state, m)
        np.testing.assert_allclose(moved, np.zeros_like(m) if expect_zero else m)


def test_projector_is_a_linear_operator():
    G = _grad((12, 9), seed=13)
    projector = Projector(4, source="svd", side="left")
    state = projector.init_state(G.shape)
    low = projector.project(state, G, 0).low
    P = projector.operator(state)
    assert P.shape == (12, 4) and "orthonormal" in P.tags
    assert dottest(P)
    np.testing.assert_allclose(P.H @ G, low, atol=1e-12)


def test_bfloat16_gradients_get_a_float32_factorisation_stored_in_bfloat16():
    G = _grad((32, 16), seed=14, dtype=torch.float32).bfloat16()
    projector = Projector(4, source="svd")
    state = projector.init_state(G.shape)
    low = projector.project(state, G, 0).low
    assert low.dtype == state["basis"].dtype == torch.bfloat16
    B = state["basis"].float()
    np.testing.assert_allclose(B.T @ B, np.eye(4), atol=2e-2)


def test_state_round_trips_through_weights_only_load():
    projector = Projector(3, source="dct", refresh=AdaptiveGap(gap=1, window=1))
    state = projector.init_state((9, 7))
    for t in range(3):
        projector.project(state, _grad((9, 7), seed=t), t)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded.keys() == state.keys()
    for key in state:
        if torch.is_tensor(state[key]):
            assert torch.equal(loaded[key], state[key])
        else:
            assert loaded[key] == state[key]
    assert projector.state_nbytes(state) == 3 * 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2, "source": "qr"}, "source"),
        ({"rank": 2, "side": "both"}, "side"),
        ({"rank": 2, "moments": "project"}, "moments"),
        ({"rank": 2, "refresh": 0}, "gap"),
        ({"rank": 2, "refresh": "sometimes"}, "refresh"),
        ({"rank": 2, "scale": -1.0}, "scale"),
    ],
)
def test_bad_options_raise_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Projector(**kwargs)


def test_non_matrix_parameters_are_refused():
    with pytest.raises(ValueError, match="2-D parameter"):
        Projector(2).init_state((5,))
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveGap(threshold=1.5)


def test_every_source_gives_the_same_projection_when_rank_is_full():
    G = _grad((6, 4), seed=15)
    for source, side in itertools.product(SOURCES, ["left", "right"]):
        projector = Projector(6, source=source, side=side)
        state = projector.init_state(G.shape)
        back = projector.project_back(state, projector.project(state, G, 0).low)
        np.testing.assert_allclose(back, G, atol=1e-6)


@pytest.mark.parametrize("source", ["svd", "randomized", "random"])
def test_refreshed_bases_are_sign_aligned_with_the_previous_one(source):
    projector = Projector(6, source=source, side="left", refresh=1)
    state = projector.init_state((20, 15))
    G = _grad((20, 15), seed=20)
    projector.project(state, G, 0)
    for t in range(1, 6):
        old = projector.basis(state).clone()
        G = G + 0.3 * _grad((20, 15), seed=20 + t)
        out = projector.project(state, -G if t % 2 else G, t)
        new = projector.basis(state)
        assert torch.all(torch.diagonal(new.mT @ old) >= 0)
        np.testing.assert_allclose(out.rotation, (new.mT @ old).float(), atol=1e-6)
        np.testing.assert_allclose(out.low, new.mT @ (-G if t % 2 else G), atol=1e-6)


# --------------------------------------------------------------- quantised basis storage (Q-GaLore)
STORAGE_BITS = {"int8": 8, "int4": 4}


def _within_half_a_step(quantized, dense, state):
    """Each value of the dequantised basis within half its group's step of the dense one, plus float32 rounding."""
    group, numel = state["basis_group"], dense.numel()
    step = state["basis_scale"].double().repeat_interleave(group)[:numel].reshape(dense.shape)
    # offset + code · scale rounds twice in float32, relative to values of at most 1 (orthonormal columns)
    excess = (quantized.double() - dense.double()).abs() - (step / 2 + 4 * torch.finfo(torch.float32).eps)
    assert torch.all(excess <= 0), f"beyond half a step by up to {float(excess.max())}"


@pytest.mark.parametrize("storage", ["int8", "int4"])
@pytest.mark.parametrize("source", ["svd", "randomized", "random"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_quantised_basis_is_the_dense_one_within_half_a_step_and_is_the_one_used(storage, source, side):
    shape = (40, 30)
    G = _grad(shape, seed=30, dtype=torch.float32)
    dense, quantised = (Projector(5, source=source, side=side, scale=0.5, storage=s) for s in ("dense", storage))
    dense_state, state = dense.init_state(shape), quantised.init_state(shape)
    dense.project(dense_state, G, 0)
    out = quantised.project(state, G, 0)
    assert "basis" not in state and state["basis_codes"].dtype == torch.uint8
    assert state["basis_bits"] == STORAGE_BITS[storage] and state["basis_group"] == 256
    B = quantised.basis(state)
    assert B.dtype == torch.float32 and B.shape == dense.basis(dense_state).shape
    _within_half_a_step(B, dense.basis(dense_state), state)
    # the projection at the refresh, at a later step and the way back all use the dequantised basis
    left = side == "left"
    # float32 products of length 40 or 30 with entries below 1 and |G| ~ 3
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.low, B.mT @ G if left else G @ B, **tol)
    G2 = _grad(shape, seed=31, dtype=torch.float32)
    low = quantised.project(state, G2, 1).low
    torch.testing.assert_close(low, B.mT @ G2 if left else G2 @ B, **tol)
    torch.testing.assert_close(quantised.project_back(state, low), 0.5 * (B @ low if left else low @ B.mT), **tol)


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_quantised_refresh_is_sign_aligned_and_rotates_by_the_dequantised_bases(storage):
    projector = Projector(6, source="svd", side="left", refresh=1, moments="rotate", storage=storage)
    state = projector.init_state((300, 20))
    G = _grad((300, 20), seed=32, dtype=torch.float32)
    projector.project(state, G, 0)
    for t in range(1, 4):
        old = projector.basis(state).clone()
        G = G + 0.3 * _grad((300, 20), seed=32 + t, dtype=torch.float32)
        out = projector.project(state, -G if t % 2 else G, t)
        new = projector.basis(state)
        assert out.changed and torch.all(torch.diagonal(new.mT @ old) >= 0)
        # both products are float32 GEMMs of the same operands: equal up to summation order
        torch.testing.assert_close(out.rotation, new.mT @ old, rtol=1e-5, atol=1e-6)


def test_adaptive_gap_grows_with_a_quantised_basis_on_a_stable_gradient():
    projector = Projector(
        4, source="svd", refresh=AdaptiveGap(gap=2, threshold=0.9, factor=2, window=2), storage="int4"
    )
    state = projector.init_state((64, 48))
    G = _grad((64, 48), seed=33, dtype=torch.float32)
    refreshed = [t for t in range(20) if projector.project(state, G, t).refresh_s > 0]
    # the same gradient gives the same codes: the similarity is ‖B̂ᵀB̂‖²_F / r of the dequantised basis,
    # 1 up to its departure from orthonormality (measured 1.028 here; 1.025-1.030 for int4 bases from
    # (512, 8) to (2048, 128)); 0.1 leaves room for other BLAS summation orders, and is far from 0.9
    assert refreshed == [0, 2, 4, 8, 16]
    np.testing.assert_allclose(state["similarities"], [1.0, 1.0], atol=0.1)


def test_int4_basis_takes_about_an_eighth_of_float32():
    # (512, 8) basis: 4096 values in 16 groups of 256: 2048 code bytes + 16 · 8 = 2176, float32 16384
    G = _grad((512, 64), seed=34, dtype=torch.float32)
    sizes = {}
    for storage in ("dense", "int8", "int4"):
        projector = Projector(8, source="randomized", side="left", storage=storage)
        state = projector.init_state(G.shape)
        projector.project(state, G, 0)
        sizes[storage] = projector.state_nbytes(state)
    assert sizes == {"dense": 16384, "int8": 4096 + 128, "int4": 2048 + 128}
    # 17/128 = 0.133: 1/8 for the codes plus 1/64 for one float32 scale and minimum per 256 values
    np.testing.assert_allclose(sizes["int4"] / sizes["dense"], 17 / 128, rtol=0)


def test_dct_source_ignores_the_storage():
    G = _grad((30, 20), seed=35)
    dense, quantised = Projector(4, source="dct"), Projector(4, source="dct", storage="int4")
    dense_state, state = dense.init_state(G.shape), quantised.init_state(G.shape)
    torch.testing.assert_close(quantised.project(state, G, 0).low, dense.project(dense_state, G, 0).low, rtol=0, atol=0)
    assert "basis_codes" not in state and state["indices"].dtype == torch.int32


def test_quantised_state_round_trips_through_weights_only_load():
    projector = Projector(3, source="randomized", refresh=1, storage="int4", storage_group=8)
    state = projector.init_state((9, 7))
    for t in range(3):
        projector.project(state, _grad((9, 7), seed=t), t)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    torch.testing.assert_close(projector.basis(loaded), projector.basis(state), rtol=0, atol=0)
    # a (7, 3) basis in groups of 8: 3 groups, 24 codes in 12 bytes, 3 · 8 bytes of scale and minimum
    assert projector.state_nbytes(state) == 12 + 24


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"storage": "int2"}, "storage must be one of"),
        ({"storage_group": 0}, "storage_group must be an integer >= 1"),
        ({"storage": "int4", "storage_group": 255}, "storage_group must be even for int4"),
    ],
)
def test_bad_storage_options_raise_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Projector(2, **kwargs)
