"""Memory breakdown: the shape-only estimate equals the bytes a trained model and optimizer hold."""

import pytest

torch = pytest.importorskip("torch")

from solvers.lowrank import GaLoreAdamW, galore_param_groups  # noqa: E402
from solvers.lowrank.memory import estimate_memory, measure_memory, refresh_workspace_bytes  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.Linear(32, 5)
    )


def _one_step(model, opt):
    model(torch.randn(8, 48)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("proj", ["svd", "randomized", "dct"])
def test_estimate_equals_measurement_for_galore(proj):
    model = _model()
    groups = galore_param_groups(model, ["0", "2"], rank=8, proj=proj)
    opt = GaLoreAdamW(groups, lr=1e-3)
    _one_step(model, opt)
    measured = measure_memory(model, opt)
    assert measured == estimate_memory(groups, optimizer="galore-adamw")
    # (64, 48): right side, moments 64x8, basis 48x8; (32, 64): left side, moments 8x64, basis 32x8
    weights = sum(p.numel() for p in model.parameters()) * 4
    small = sum(p.numel() for p in model.parameters() if p.dim() == 1) + 5 * 32
    assert measured["weights"] == measured["gradients"] == weights
    assert measured["optimizer_states"] == 2 * 4 * (64 * 8 + 8 * 64 + small)
    assert measured["projector"] == (2 * 8 * 4 if proj == "dct" else (48 * 8 + 32 * 8) * 4)


def test_estimate_equals_measurement_for_adamw_and_layerwise_gradient_peak():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _one_step(model, opt)
    groups = [{"params": list(model.parameters())}]
    assert measure_memory(model, opt, layerwise=True) == estimate_memory(groups, optimizer="adamw", layerwise=True)
    assert estimate_memory(groups, optimizer="adamw", layerwise=True)["gradients"] == 64 * 48 * 4


def test_workspace_formulas():
    # svd of the oriented (48, 64) matrix: copy 48*64, U 48*48, S 48, Vh 48*64
    assert refresh_workspace_bytes((64, 48), 8, "svd") == 4 * (48 * 64 + 48 * 48 + 48 + 48 * 64)
    assert refresh_workspace_bytes((64, 48), 48, "svd") == 0
    # dct: copy, complex FFT and the similarity matrix, all d x k
    assert refresh_workspace_bytes((64, 48), 8, "dct") == 4 * 4 * 48 * 64
    w = 16
    assert refresh_workspace_bytes((64, 48), 8, "randomized") == 4 * (64 * w + 2 * 48 * w + w * 64 + 2 * w * w)


def test_estimate_equals_measurement_for_8bit_moments():
    pytest.importorskip("bitsandbytes")
    from solvers.lowrank import GaLoreAdamW8bit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 40))
    groups = galore_param_groups(model, ["0"], rank=64)
    opt = GaLoreAdamW8bit(groups, lr=1e-3)
    model(torch.randn(4, 256)).square().mean().backward()
    opt.step()
    measured = measure_memory(model, opt)
    assert measured == estimate_memory(groups, optimizer="galore-adamw8bit")
    # (128, 256) at rank 64 (left side): 8-bit moments of 64 x 256 plus a float32 scale per
    # 256 values; the (40, 128) weight full-rank in 8 bits; the biases (< 4096 values) in float32
    assert measured["optimizer_states"] == 2 * (64 * 256 + 4 * 64) + 2 * (40 * 128 + 4 * 20) + 2 * 4 * (128 + 40)


class _Blocks(torch.nn.Module):
    """Four identical blocks (a (16, 12)-shaped and a (12, 16)-shaped linear layer each) between an input and a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(6, 12)
        self.layers = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12)) for _ in range(4)
        )
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        x = self.inp(x)
        for block in self.layers:
            x = x + block(x)
        return self.head(x)


def test_estimate_equals_measurement_for_owlore_with_the_inactive_blocks_frozen():
    from solvers.lowrank import OwLoreAdamW, owlore_param_groups

    model = _Blocks()
    groups = owlore_param_groups(model, model.layers, rank=4)
    opt = OwLoreAdamW(groups, model.layers, sampling="uniform", active_layers=2, interval=100, lr=1e-3)
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
    frozen = [p for index, block in enumerate(model.layers) if index not in opt.active for p in block.parameters()]
    assert len(frozen) == 2 * 4
    measured = measure_memory(model, opt)
    assert measured == estimate_memory(groups, optimizer="galore-adamw", frozen=frozen)
    # two active blocks: (16, 12) right side and (12, 16) left side at rank 4, biases full-rank; the
    # input and head layers are always trained full-rank
    block_moments = 16 * 4 + 4 * 16 + 16 + 12
    outside = 6 * 12 + 12 + 12 * 3 + 3
    assert measured["optimizer_states"] == 2 * 4 * (2 * block_moments + outside)


def test_estimate_equals_measurement_for_gradnorm_lorp_with_its_magnitude_vectors():
    from solvers.lowrank import GradNormLoRPAdamW

    model = _model()
    groups = galore_param_groups(model, ["0", "2"], rank=8)
    opt = GradNormLoRPAdamW(groups, lr=1e-3)
    _one_step(model, opt)
    measured = measure_memory(model, opt)
    assert measured == estimate_memory(groups, optimizer="galore-adamw", magnitudes=True)
    plain = estimate_memory(groups, optimizer="galore-adamw")
    # magnitude, direction norm and the magnitude's two moments: one float32 per row of (64, 48) and (32, 64)
    assert measured["optimizer_states"] - plain["optimizer_states"] == 4 * 4 * (64 + 32)
