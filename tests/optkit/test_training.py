"""TrainingTask: seeded models, restartable batch streams, the validation measure, device moves, errors."""

import math
import subprocess
import sys

import numpy as np
import pytest

import optkit
from optkit.training import TrainingTask

torch = pytest.importorskip("torch")

V = 16  # vocabulary of the bigram model below


class Bigram(torch.nn.Module):
    """Next-token logits from the current token alone: ``logits = E[token]``."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(V, V)


def bigram_loss(model, batch):
    logits = model.table(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))


def stream(seed=3):
    def batches():
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield torch.randint(0, V, (4, 9), generator=gen)

    return batches


def make_task(**kwargs):
    val = [torch.randint(0, V, (4, 9), generator=torch.Generator().manual_seed(k)) for k in range(3)]
    options = dict(tokens_per_batch=36, seed=1, loss_fn=bigram_loss, name="test/bigram")
    return TrainingTask(Bigram, stream(), val, **{**options, **kwargs})


def test_import_optkit_keeps_torch_out():
    code = "import sys, optkit; print('torch' in sys.modules, optkit.TrainingTask.kind)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "training"]


def test_problem_interface():
    task = make_task()
    assert task.kind == "training" and task.backend == "torch" and task.device == "cpu"
    assert task.capabilities == frozenset({"loss"})
    assert task.x0 is None and task.dtype is None
    assert task.n == V * V  # counted on a built model
    assert "n_params=256" in repr(task)
    assert make_task(n_params=7).n == 7


def test_make_model_is_seeded_and_leaves_the_global_stream_alone():
    task = make_task()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b = task.make_model(), task.make_model()
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected_next.numpy())
    np.testing.assert_array_equal(a.table.weight.detach().numpy(), b.table.weight.detach().numpy())
    other = make_task(seed=2).make_model()
    assert not torch.equal(a.table.weight, other.table.weight)


def test_train_batches_restart_the_same_stream():
    task = make_task()
    first = [next(it) for it in [task.train_batches()] for _ in range(3)]
    again = task.train_batches()
    for batch in first:
        assert batch.shape == (4, 9) and batch.dtype == torch.int64
        np.testing.assert_array_equal(next(again).numpy(), batch.numpy())


def test_loss_counts_batches_and_tokens():
    task = make_task()
    model = task.make_model()
    batch = next(task.train_batches())
    loss = task.loss(model, batch)
    loss.backward()
    assert model.table.weight.grad is not None
    assert dict(task.counters) == {"batches": 1, "tokens": 36}


def test_evaluate_is_the_mean_validation_loss_in_eval_mode():
    task = make_task()
    model = task.make_model().train()
    with torch.no_grad():
        expected = np.mean([float(bigram_loss(model, b)) for b in task.val_batches])
    out = task.evaluate(model)
    np.testing.assert_allclose(out["val_loss"], expected, rtol=1e-12)
    np.testing.assert_allclose(out["val_ppl"], math.exp(expected), rtol=1e-12)
    assert model.training and model.table.weight.grad is None  # mode restored, no gradient
    assert task.counters == {}  # evaluation is not counted


def test_zero_logits_give_log_vocabulary_exactly():
    # uniform predictions: the cross-entropy is ln V whatever the targets
    task = make_task()
    model = task.make_model()
    with torch.no_grad():
        model.table.weight.zero_()
    out = task.evaluate(model)
    np.testing.assert_allclose(out["val_loss"], math.log(V), rtol=1e-6)
    np.testing.assert_allclose(out["val_ppl"], V, rtol=1e-6)


def test_to_changes_dtype_and_keeps_the_task():
    task = make_task()
    moved = task.to("torch", "cpu", "float64")
    assert moved.dtype == torch.float64 and moved.device == "cpu" and moved.name == task.name
    model = moved.make_model()
    assert model.table.weight.dtype == torch.float64
    np.testing.assert_allclose(
        model.table.weight.detach().numpy(), task.make_model().table.weight.detach().numpy(), rtol=1e-7
    )
    np.testing.assert_allclose(moved.evaluate(model)["val_loss"], task.evaluate(task.make_model())["val_loss"], 1e-6)
    assert task.to("torch", dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_task().to("numpy"), "backend must be 'torch'"),
        (lambda: make_task().to("torch", dtype="int8"), "dtype must be one of"),
        (lambda: make_task(tokens_per_batch=0), "tokens_per_batch must be an integer >= 1"),
        (lambda: make_task(seed=-1), "seed must be"),
        (lambda: make_task(loss_fn=3), "loss_fn must be callable"),
        (lambda: TrainingTask(None, stream(), [torch.zeros(1, 2)], tokens_per_batch=2), "model_factory must be"),
        (lambda: TrainingTask(Bigram, [1], [torch.zeros(1, 2)], tokens_per_batch=2), "train_batches must be"),
        (lambda: TrainingTask(Bigram, stream(), [], tokens_per_batch=2), "val_batches must be a non-empty"),
        (lambda: make_task().evaluate(np.zeros(3)), "x must be the trained torch.nn.Module"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_exported():
    assert optkit.TrainingTask is TrainingTask and "TrainingTask" in optkit.__all__
