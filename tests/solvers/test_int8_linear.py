"""Int8Linear: the INT8 weight's forward and backward against nn.Linear on the dequantised weight, gradient
accumulation, the backward under a frozen input, stochastic re-quantisation, module replacement and memory."""

import copy

import pytest

torch = pytest.importorskip("torch")

import galore_cases

from optkit.quantization import dequantize, quantize
from optkit.torch_optim import state_bytes
from solvers.lowrank.int8_linear import Int8Linear, quantize_linear_layers, quantized_linear_of
from solvers.lowrank.memory import measure_memory

# 7 x 5 = 35 weights in groups of 8: five groups, the last one padded
N_IN, N_OUT, GROUP = 7, 5, 8


def _layers(bias=True, seed=0):
    """An Int8Linear and the nn.Linear holding its dequantised weight (float64) and the same bias."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(N_IN, N_OUT, bias=bias).double()
    layer = Int8Linear.from_linear(copy.deepcopy(linear), group_size=GROUP)
    with torch.no_grad():
        linear.weight.copy_(layer.dequantized_weight(torch.float64))
    return layer, linear


def _inputs(seed=1):
    return torch.randn(3, 4, N_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_forward_and_backward_equal_nn_linear_on_the_dequantised_weight():
    layer, linear = _layers()
    x = _inputs()
    x_int8, x_float = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 4, N_OUT, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for module, inp in ((layer, x_int8), (linear, x_float)):
        ((module(inp) - target) ** 2).sum().backward()
    # float64 throughout: the same products, possibly summed in another order (~1e-16 relative)
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(layer(x), linear(x), **tol)
    torch.testing.assert_close(x_int8.grad, x_float.grad, **tol)
    torch.testing.assert_close(layer.bias.grad, linear.bias.grad, **tol)
    assert layer.weight_grad.dtype == torch.float64 and layer.weight_grad.shape == (N_OUT, N_IN)
    torch.testing.assert_close(layer.weight_grad, linear.weight.grad, **tol)


def test_float32_inputs_give_a_float32_weight_gradient():
    layer = Int8Linear(N_IN, N_OUT, group_size=GROUP)
    layer(_inputs().float()).sum().backward()
    assert layer.weight_grad.dtype == torch.float32


def test_two_micro_batches_accumulate_the_sum_of_their_gradients():
    layer, _ = _layers()
    grads = []
    for seed in (1, 2):
        layer(_inputs(seed)).square().sum().backward()
        grads.append(layer.weight_grad.clone())
        layer.weight_grad = None
    for seed in (1, 2):
        layer(_inputs(seed)).square().sum().backward()
    # one addition of two float64 tensors, as autograd accumulates .grad: exact
    torch.testing.assert_close(layer.weight_grad, grads[0] + grads[1], rtol=0, atol=0)


def test_backward_fires_below_a_frozen_embedding():
    """musubi-tuner#90: nothing before the layer requires grad, yet its weight gets its gradient."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(11, N_IN).double().requires_grad_(False)
    layer, linear = _layers(bias=False)
    tokens = torch.tensor([[1, 4, 9], [2, 2, 10]])
    layer(embedding(tokens)).square().sum().backward()
    linear(embedding(tokens)).square().sum().backward()
    assert layer.weight_grad is not None
    torch.testing.assert_close(layer.weight_grad, linear.weight.grad, rtol=1e-12, atol=1e-12)  # as above


def test_no_graph_under_no_grad():
    layer, linear = _layers()
    with torch.no_grad():
        out = layer(_inputs())
    assert not out.requires_grad
    torch.testing.assert_close(out, linear(_inputs()).detach(), rtol=1e-12, atol=1e-12)


def test_weight_grad_hook_runs_after_each_backward():
    layer, _ = _layers()
    seen = []
    handle = layer.register_weight_grad_hook(lambda module: seen.append(module.weight_grad.clone()))
    layer(_inputs()).sum().backward()
    layer(_inputs(2)).sum().backward()
    assert len(seen) == 2
    torch.testing.assert_close(seen[1], layer.weight_grad, rtol=0, atol=0)
    handle.remove()
    layer(_inputs()).sum().backward()
    assert len(seen) == 2


def test_stochastic_requantisation_is_unbiased():
    layer, _ = _layers()
    weight = torch.randn(N_OUT, N_IN, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    draws = 4000
    total = torch.zeros_like(weight)
    for seed in range(draws):
        layer.set_weight(weight, generator=torch.Generator().manual_seed(seed))
        total += layer.dequantized_weight(torch.float64)
    step = layer.weight_scale.max().item()
    # Each draw is one of the two codes around the value, the error of variance <= step^2 / 4; the mean of 4000 has
    # a standard deviation <= step / 126: 5 of those bound it (the grid itself is the same at every draw). Rounding
    # to the nearest code is off by up to step / 2 instead, which this bound rules out for a biased rounding.
    torch.testing.assert_close(total / draws, weight, rtol=0, atol=5 * step / (2 * draws**0.5))
    nearest = quantize(weight, 8, GROUP)
    nearest_error = (dequantize(nearest, weight.shape, 8, GROUP, torch.float64) - weight).abs().max().item()
    assert nearest_error > 5 * step / (2 * draws**0.5)


def test_quantize_linear_layers_replaces_the_selected_layers_in_place():
    model = galore_cases.Block(6, 10, 4, head=3)
    reference = copy.deepcopy(model)
    names = quantize_linear_layers(model, group_size=16)
    assert names == ["attn_proj", "mlp_out"]  # "all-linear" leaves the output layer
    assert isinstance(model.attn_proj, Int8Linear) and isinstance(model.lm_head, torch.nn.Linear)
    assert model.attn_proj.bias is not None
    # nearest rounding: every weight within half a quantisation step of the original
    for name in names:
        layer, original = getattr(model, name), getattr(reference, name)
        half_step = layer.weight_scale.max().item() / 2
        torch.testing.assert_close(layer.dequantized_weight(), original.weight, rtol=0, atol=half_step * (1 + 1e-6))
    assert quantize_linear_layers(galore_cases.Block(6, 10, 4), ["mlp_out"]) == ["mlp_out"]
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        quantize_linear_layers(model, "nothing.*")
    with pytest.raises(ValueError, match="group_size"):
        quantize_linear_layers(galore_cases.Block(6, 10, 4), group_size=0)


def test_copies_and_checkpoints_keep_the_layer_of_each_code_tensor():
    model = galore_cases.Block(6, 10, 4)
    quantize_linear_layers(model, group_size=16)
    twin = copy.deepcopy(model)
    assert quantized_linear_of(twin.attn_proj.weight_codes) is twin.attn_proj
    assert quantized_linear_of(model.attn_proj.weight_codes) is model.attn_proj
    assert quantized_linear_of(model.norm.weight) is None
    fresh = galore_cases.Block(6, 10, 4, seed=5)
    quantize_linear_layers(fresh, group_size=16)
    fresh.load_state_dict(model.state_dict())
    for p, q in zip(fresh.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_memory_counts_codes_and_group_scales_as_weights():
    model = galore_cases.Block(6, 10, 4, head=3)
    quantize_linear_layers(model, group_size=16)
    model(torch.randn(2, 6)).sum().backward()
    memory = measure_memory(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    groups = {"attn_proj": 4, "mlp_out": 3}  # 60 and 40 weights in groups of 16
    int8 = sum(16 * n + 8 * n for n in groups.values())  # a byte per (padded) code, a float32 scale and minimum
    floats = 4 * (10 + 2 * 10 + 4 + 4 * 3)  # biases, norm, head
    assert memory["weights"] == int8 + floats
    # the float32 gradient buffers of the INT8 weights are gradients like the float parameters'
    assert memory["gradients"] == 4 * (60 + 40) + floats
    # the trainer's footprint counts them too: they live between backward and step like any .grad
    footprint = state_bytes(model, torch.optim.SGD([model.norm.weight], lr=0.1))
    assert footprint["grads"] == memory["gradients"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="in_features"):
        Int8Linear(0, 3)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        Int8Linear.from_linear(torch.nn.Conv1d(1, 1, 1))
    layer = Int8Linear(4, 3, group_size=4)
    with pytest.raises(ValueError, match="shape"):
        layer.set_weight(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="4 features"):
        layer(torch.zeros(2, 5))


def test_a_dtype_cast_keeps_the_scales_and_minima_in_float32():
    layer, _ = _layers()
    weight = layer.dequantized_weight()
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16
    assert layer.weight_scale.dtype == layer.weight_offset.dtype == torch.float32
    torch.testing.assert_close(layer.dequantized_weight(), weight, rtol=0, atol=0)  # nothing was rounded
