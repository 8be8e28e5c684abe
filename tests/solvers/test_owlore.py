"""OwLore and LISA: the outlier ratio against a direct computation, the sampler against its probabilities, fresh
state on re-sampled layers, frozen layers without gradients, state memory by active layers, resume, DDP, recipes."""

import functools
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import galore_cases
from distributed_cases import run_ranks, save_rank

import optkit
from solvers.lowrank import (
    GaLoreAdamW,
    OwLoreAdamW,
    find_layers,
    layer_outlier_ratios,
    owlore_param_groups,
    sample_layers,
)

N_IN, WIDTH, HIDDEN, N_OUT, N_LAYERS = 5, 6, 8, 3, 4
# the tests' ratios: every layer positive, all different, so a draw that ignored them would show
RATIOS = (0.1, 0.2, 0.3, 0.4)


class Stack(torch.nn.Module):
    """An input layer, ``n_layers`` residual blocks (:class:`galore_cases.Block`) in ``layers``, a norm and a head."""

    def __init__(self, n_layers=N_LAYERS, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Linear(N_IN, WIDTH)
        blocks = [galore_cases.Block(WIDTH, HIDDEN, WIDTH, seed=seed + 1 + i) for i in range(n_layers)]
        self.layers = torch.nn.ModuleList(blocks)
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, N_OUT)

    def forward(self, x):
        h = self.embed(x)
        for block in self.layers:
            h = h + block(h)
        return self.head(self.norm(h))


GALORE = {"rank": 2, "update_proj_gap": 2}


def _owlore(model, *, galore=GALORE, **options):
    options = {"outlier_ratios": RATIOS, "active_layers": 2, "interval": 2, "lr": 1e-2, **options}
    return OwLoreAdamW(owlore_param_groups(model, model.layers, **galore), model.layers, **options)


_batches = functools.partial(galore_cases.batches, n_in=N_IN, n_out=N_OUT)


def _step(model, opt, batch):
    x, y = batch
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


# ----------------------------------------------------------------------------- outlier ratios


def test_outlier_ratios_equal_a_direct_computation():
    model = Stack().double()
    xs = [torch.randn(7, N_IN, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3)]
    M = 2.5  # low enough that every block of this random model has outliers
    ratios = layer_outlier_ratios(model, model.layers, xs, M=M)
    # directly: each block's linear inputs over all tokens, their column norms, the pooled scores
    expected = []
    with torch.no_grad():
        h = model.embed(torch.cat(xs))
        for block in model.layers:
            hidden = block.norm(torch.tanh(block.attn_proj(h)))
            scores = torch.cat(
                [
                    (block.attn_proj.weight.abs() * torch.linalg.vector_norm(h, dim=0)).flatten(),
                    (block.mlp_out.weight.abs() * torch.linalg.vector_norm(hidden, dim=0)).flatten(),
                ]
            )
            expected.append(float((scores > M * scores.mean()).double().mean()))
            h = h + block(h)
    assert all(0 < r < 0.5 for r in expected)
    # float64 norms summed per batch or over the concatenation differ by ~1e-16 relative; no score of this model
    # lies that close to its threshold, so the counts, hence the fractions, are equal exactly
    torch.testing.assert_close(ratios, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=0)


def test_the_threshold_is_strictly_above_M_times_the_mean_of_the_pooled_scores():
    first, second = torch.nn.Linear(4, 1, bias=False), torch.nn.Linear(1, 4, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 5.0]]))
        second.weight.fill_(1.0)
    block = torch.nn.Sequential(first, second)
    tokens = [torch.ones(4, 4)]  # every input norm is 2; second's input is 8 on every token, norm 16
    # pooled scores (2, 2, 2, 10, 16, 16, 16, 16), mean 10; first's scores alone have mean 4
    assert float(layer_outlier_ratios(block, [block], tokens, M=1.5)[0]) == 0.5  # above 15: the four 16s
    assert float(layer_outlier_ratios(block, [block], tokens, M=1.6)[0]) == 0.0  # 16 is not above 16
    assert float(layer_outlier_ratios(block, [block], tokens, M=0.9)[0]) == 0.625  # above 9: 10 and the 16s


def test_calibration_leaves_the_model_as_it_was():
    model = Stack()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    layer_outlier_ratios(model, model.layers, [torch.randn(3, N_IN)])
    assert model.training
    assert not model.layers[0].attn_proj._forward_pre_hooks
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q) and p.grad is None


def test_find_layers_on_transformers_models():
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=3
        )
    )
    assert find_layers(llama) == list(llama.model.layers)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=32, hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2
        )
    )
    assert find_layers(bert) == list(bert.encoder.layer)
    assert find_layers(bert, "encoder.layer") == list(bert.encoder.layer)


def test_find_layers_skips_lists_inside_blocks_and_refuses_ties():
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(5)])

    nested = torch.nn.Module()
    nested.blocks = torch.nn.ModuleList([Experts() for _ in range(3)])
    assert find_layers(nested) == list(nested.blocks)
    tied = torch.nn.Module()
    tied.encoder = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    tied.decoder = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    with pytest.raises(ValueError, match="'encoder'.*'decoder'.*layers="):
        find_layers(tied)
    with pytest.raises(ValueError, match="found no nn.ModuleList"):
        find_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="names no submodule"):
        find_layers(tied, "middle")


# ----------------------------------------------------------------------------- sampling


def _chi_square_pvalue(counts, expected):
    stats = pytest.importorskip("scipy.stats")
    return stats.chisquare(counts, expected).pvalue


def test_one_draw_follows_the_probabilities():
    p = torch.tensor(RATIOS, dtype=torch.float64) / sum(RATIOS)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_layers(p, 1, generator) for _ in range(4000)])
    counts = np.bincount(draws.numpy(), minlength=N_LAYERS)
    assert _chi_square_pvalue(counts, 4000 * p.numpy()) > 1e-3


def test_two_draws_follow_the_without_replacement_probabilities():
    p = np.array(RATIOS) / sum(RATIOS)
    # successive draws, the second renormalised over the indices left: P({i, j}) = p_i p_j/(1-p_i) + p_j p_i/(1-p_j)
    pairs = list(itertools.combinations(range(N_LAYERS), 2))
    exact = np.array([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
    np.testing.assert_allclose(exact.sum(), 1.0, rtol=1e-12)  # the enumeration is complete
    generator = torch.Generator().manual_seed(1)
    draws = [tuple(sorted(sample_layers(torch.from_numpy(p), 2, generator).tolist())) for _ in range(4000)]
    counts = np.array([draws.count(pair) for pair in pairs])
    assert _chi_square_pvalue(counts, 4000 * exact) > 1e-3
    # inclusion probabilities are not proportional to p: the exact ones, not 2 p
    inclusion = np.array([sum(e for pair, e in zip(pairs, exact) if layer in pair) for layer in range(N_LAYERS)])
    assert not np.allclose(inclusion, 2 * p, atol=0.01)


def test_the_optimizer_draws_from_its_seeded_generator_every_interval():
    model = Stack()
    opt = _owlore(model, interval=3, seed=7)
    generator = torch.Generator().manual_seed(7)
    p = torch.tensor(RATIOS, dtype=torch.float64) / sum(RATIOS)
    expected = [tuple(sorted(sample_layers(p, 2, generator).tolist())) for _ in range(3)]
    seen = []
    for batch in _batches(9):
        seen.append(opt.active)
        _step(model, opt, batch)
    assert seen == [expected[0]] * 3 + [expected[1]] * 3 + [expected[2]] * 3


def test_frozen_layers_get_no_gradient():
    model = Stack()
    opt = _owlore(model)
    x, y = _batches(1)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert len(opt.active) == 2
    for index, block in enumerate(model.layers):
        for p in block.parameters():
            assert p.requires_grad == (index in opt.active)
            assert (p.grad is not None) == (index in opt.active)
    for module in (model.embed, model.norm, model.head):
        assert all(p.grad is not None for p in module.parameters())


# ----------------------------------------------------------------------------- state


def test_a_resampled_layer_starts_from_fresh_state():
    model = Stack()
    # interval 2: the state of a block's first step back is still there to read before the next draw
    opt = _owlore(model, active_layers=1, interval=2, seed=3, galore={**GALORE, "proj": "svd"})
    ever, previous, checked = set(), (), 0
    for x, y in _batches(16):
        torch.nn.functional.mse_loss(model(x), y).backward()
        (index,) = opt.active
        block = model.layers[index]
        if index in ever and index not in previous:
            # a fresh GaLoreAdamW on copies of the block, given the same gradients, takes the same step
            twin = [torch.nn.Parameter(p.detach().clone()) for p in block.parameters()]
            for t, p in zip(twin, block.parameters()):
                t.grad = p.grad.clone()
            weights = {id(block.attn_proj.weight), id(block.mlp_out.weight)}
            ids = [id(p) in weights for p in block.parameters()]
            fresh = GaLoreAdamW(
                [
                    {"params": [t for t, w in zip(twin, ids) if not w]},
                    {"params": [t for t, w in zip(twin, ids) if w], **GALORE},
                ],
                lr=1e-2,
            )
            assert all(p not in opt.state for p in block.parameters())  # released when it was frozen
            fresh.step()
            opt.step()
            for t, p in zip(twin, block.parameters()):
                torch.testing.assert_close(p, t, rtol=0, atol=0)
                torch.testing.assert_close(opt.state[p]["exp_avg"], fresh.state[t]["exp_avg"], rtol=0, atol=0)
                assert int(opt.state[p]["step"]) == 1
            checked += 1
        else:
            opt.step()
        opt.zero_grad()
        ever.add(index)
        previous = (index,)
    assert checked >= 2


def test_keep_resumes_a_resampled_layer_from_its_old_state():
    model = Stack()
    opt = _owlore(model, active_layers=1, interval=1, seed=3, layer_state="keep")
    for batch in _batches(12):
        _step(model, opt, batch)
    steps = [
        int(opt.state[block.attn_proj.weight]["step"]) for block in model.layers if block.attn_proj.weight in opt.state
    ]
    # each of the 12 steps trained one block, whose state was kept across its inactive spells
    assert sum(steps) == 12 and max(steps) > 1


def test_all_layers_with_a_huge_interval_equal_galore_adamw():
    galore = {**GALORE, "proj": "randomized"}
    model, twin = Stack(), Stack()
    opt = _owlore(model, active_layers=N_LAYERS, interval=10**9, galore=galore, weight_decay=0.1)
    ref = GaLoreAdamW(owlore_param_groups(twin, twin.layers, **galore), lr=1e-2, weight_decay=0.1)
    for batch in _batches(5):
        _step(model, opt, batch)
        _step(twin, ref, batch)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    "split, layer_state, proj",
    [(4, "fresh", "random"), (3, "keep", "svd")],
    ids=["right-after-a-draw-fresh", "mid-interval-keep"],
)
def test_resume_is_bit_exact_across_draws(tmp_path, split, layer_state, proj):
    def build():
        model = Stack()
        return model, _owlore(model, layer_state=layer_state, galore={**GALORE, "proj": proj}, weight_decay=0.01)

    def same_sampler(model, opt):
        reference, reference_opt = build()
        galore_cases.train(reference, reference_opt, batches[:split])
        assert opt.active == reference_opt.active
        assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in reference.parameters()]

    batches = _batches(8)
    galore_cases.assert_resume_is_exact(build, batches, tmp_path / "ckpt.pt", split=split, after_load=same_sampler)


def _state_bytes(opt, params):
    return sum(
        t.numel() * t.element_size()
        for p in params
        for value in opt.state.get(p, {}).values()
        for t in (value.values() if isinstance(value, dict) else [value])
        if torch.is_tensor(t) and t.dim() > 0
    )


def test_state_memory_scales_with_the_active_layers():
    model, twin = Stack(), Stack()
    opt = _owlore(model, interval=1, seed=2)
    ref = GaLoreAdamW(owlore_param_groups(twin, twin.layers, **GALORE), lr=1e-2)
    batches = _batches(6)
    for batch in batches:
        _step(twin, ref, batch)
    outside = [p for name, p in twin.named_parameters() if not name.startswith("layers.")]
    always = _state_bytes(ref, outside)
    blocks = _state_bytes(ref, twin.parameters()) - always
    bound = 2 / N_LAYERS * blocks + always
    for batch in batches:
        _step(model, opt, batch)
        # right after a draw, the new blocks hold no state yet and the dropped ones none any more
        assert _state_bytes(opt, model.parameters()) <= bound
    # the blocks' shapes are equal: after one step with every active block stepped, the bound is met exactly
    steady = Stack()
    opt_steady = _owlore(steady, interval=10**9)
    _step(steady, opt_steady, batches[0])
    assert _state_bytes(opt_steady, steady.parameters()) == bound


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"sampling": "norm"}, ValueError, "sampling"),
        ({"active_layers": 0}, ValueError, "active_layers"),
        ({"interval": 0}, ValueError, "interval"),
        ({"layer_state": "stale"}, ValueError, "layer_state"),
        ({"outlier_ratios": None}, ValueError, "needs outlier_ratios"),
        ({"outlier_ratios": (0.1, 0.2)}, ValueError, "4 finite non-negative"),
        ({"outlier_ratios": (0.0, 0.0, 0.3, 0.0)}, ValueError, "only 1 layers have a positive"),
        ({"sampling": "uniform"}, ValueError, "'owl' only"),
    ],
)
def test_bad_options_raise_before_any_work(options, error, match):
    model = Stack()
    with pytest.raises(error, match=match):
        _owlore(model, **options)
    assert all(p.requires_grad for p in model.parameters())


def test_layers_must_hold_parameters_of_the_optimizer():
    model = Stack()
    with pytest.raises(ValueError, match="hold no parameter"):
        OwLoreAdamW(model.head.parameters(), model.layers, sampling="uniform")
    with pytest.raises(ValueError, match="share a parameter"):
        OwLoreAdamW(model.parameters(), [model.layers[0], model.layers[0]], sampling="uniform")


# ----------------------------------------------------------------------------- DDP

WORLD, BATCH, STEPS = 2, 16, 5
# float64 on both sides; the all-reduced half-batch gradients differ from the whole batch's by rounding
# (~1e-16 relative), which five Adam steps and an SVD refresh amplify (measured: below 1e-14); 1e-10 leaves margin
RTOL, ATOL = 1e-10, 1e-12


def _ddp_batch(step):
    generator = torch.Generator().manual_seed(50 + step)
    return (
        torch.randn(BATCH, N_IN, generator=generator, dtype=torch.float64),
        torch.randn(BATCH, N_OUT, generator=generator, dtype=torch.float64),
    )


def _ddp_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = Stack().double()
        # wrapped before the optimizer freezes blocks: DDP leaves out parameters frozen when it is built
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        opt = _owlore(model)
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        active, frozen_grads = [], []
        for step in range(STEPS):
            x, y = _ddp_batch(step)
            torch.nn.functional.mse_loss(ddp(x[rows]), y[rows]).backward()
            active.append(opt.active)
            frozen_grads += [
                p.grad is not None for i, b in enumerate(model.layers) if i not in opt.active for p in b.parameters()
            ]
            opt.step()
            opt.zero_grad()
        state = opt.state_dict()
        results = {
            "params": [p.detach().clone() for p in model.parameters()],
            "active": active,
            "frozen_grads": frozen_grads,
            "state": {(k, name): v for k, s in state["state"].items() for name, v in s.items() if torch.is_tensor(v)},
            "generator": state["sampling"]["generator"],
        }
        save_rank(results, out_dir, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_ddp_ranks_are_bit_equal_and_equal_one_process(tmp_path):
    first, second = run_ranks(_ddp_worker, tmp_path, WORLD)
    assert first["active"] == second["active"] and len(set(first["active"])) > 1  # the same draws, several of them
    assert not any(first["frozen_grads"] + second["frozen_grads"])
    for p, q in zip(first["params"], second["params"], strict=True):
        assert torch.equal(p, q)
    assert first["state"].keys() == second["state"].keys()
    assert all(torch.equal(first["state"][k], second["state"][k]) for k in first["state"])
    assert torch.equal(first["generator"], second["generator"])
    model = Stack().double()
    opt = _owlore(model)
    for step in range(STEPS):
        _step(model, opt, _ddp_batch(step))
    for p, expected in zip(first["params"], model.parameters(), strict=True):
        torch.testing.assert_close(p, expected.detach(), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- recipes


def test_recipes_train_a_llama_and_report_state():
    pytest.importorskip("transformers")
    task = optkit.get_problem("llm/llama-micro:max_bytes=20000")
    options = {"max_iter": 3, "eval_every": 3, "active_layers": 1, "interval": 2}
    lisa = optkit.solve(task, "lisa", **options)
    owlore = optkit.solve(task, "owlore", rank=8, outlier_threshold=5.0, **options)
    for result in (lisa, owlore):
        assert result.nit == 3 and np.isfinite(result.fun)
        assert result.counters["batches"] == 3  # calibration is not counted as training
    # one of two blocks carries state: AdamW's full moments for lisa, projected ones for owlore
    assert owlore.trace[-1]["opt_state_mb"] < lisa.trace[-1]["opt_state_mb"]
    assert "training tasks only" in optkit.get_solver("lisa").check(optkit.get_problem("ml/least-squares"))


class _TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_recipes_accept_a_model_that_cannot_be_built_on_the_meta_device():
    # a factory loading pretrained weights (transformers' from_pretrained) refuses torch.device("meta"):
    # check() then builds it for real instead of raising (found on finetune/minilm-sentiment)
    def factory():
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("from_pretrained refuses a meta device")
        return _TwoBlocks()

    task = optkit.TrainingTask(
        factory, lambda: iter(()), [torch.ones(2, 4)], tokens_per_batch=2, loss_fn=lambda m, x: m(x).square().mean()
    )
    assert optkit.get_solver("lisa").check(task) is None
    assert optkit.get_solver("owlore").check(task) is None
