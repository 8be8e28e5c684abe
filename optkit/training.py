"""The training problem kind: a model to build, token batches to train on, a loss and a validation set.

A :class:`TrainingTask` is what a torch optimizer recipe (a solver such as ``adamw`` or
``galore-adamw``) is given. Every recipe gets the same freshly initialised model (seeded), the
same stream of training batches in the same order, and is judged by the same validation
measure, :meth:`TrainingTask.evaluate`, so a benchmark compares optimizers and nothing else.

torch is imported lazily, inside the methods, so that ``import optkit`` stays light.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

from .problem import Problem
from .validation import check_choice, check_int

if TYPE_CHECKING:
    import torch

__all__ = ["TrainingTask", "causal_lm_loss"]

#: Parameter dtypes a task may be moved to with :meth:`TrainingTask.to`.
DTYPES = ("float32", "float64", "bfloat16", "float16")


def causal_lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy of a Hugging Face causal LM on ``batch``.

    Parameters
    ----------
    model : torch.nn.Module
        A model whose ``forward(input_ids=, labels=)`` returns an object with ``.loss``
        (``transformers``' ``*ForCausalLM``), which shifts the labels by one position itself.
    batch : torch.LongTensor of shape (batch, seq_len)
        Token ids; position ``t`` predicts token ``t + 1``.

    Returns
    -------
    torch.Tensor of shape ()
        The mean over the ``batch * (seq_len - 1)`` predicted tokens, in nats.
    """
    return model(input_ids=batch, labels=batch).loss


class TrainingTask(Problem):
    """Train a torch model on a stream of token batches; judged by the loss on fixed validation batches.

    Parameters
    ----------
    model_factory : callable ``() -> torch.nn.Module``
        Builds a fresh model. It is called under ``torch.manual_seed(seed)`` (on a forked CPU
        random stream, so the caller's stream is untouched) and the model is then moved to the
        task's device and dtype: every solver starts from the same weights.
    train_batches : callable ``() -> iterator of torch.LongTensor of shape (batch, seq_len)``
        Returns a fresh, deterministic (seeded) iterator over training batches, long enough for
        any run (typically infinite). Each call starts the same stream again, so every solver
        sees the same batches in the same order.
    val_batches : sequence of torch.LongTensor of shape (batch, seq_len)
        The fixed validation set of :meth:`evaluate`.
    tokens_per_batch : int
        Tokens in one training batch (``batch * seq_len``); what one micro-batch adds to a run's
        token count.
    seed : int
        Seed of the model initialisation.
    loss_fn : callable ``(model, batch) -> 0-d tensor``, optional
        Differentiable training and validation loss; default :func:`causal_lm_loss`.
    device : str
        Where models and batches go (``"cpu"``, ``"cuda"`` ...).
    dtype : {"float32", "float64", "bfloat16", "float16"}, optional
        Parameter dtype of the built model; ``None`` keeps the factory's (float32 for
        ``transformers`` models).
    n_params : int, optional
        Number of model parameters, when known; otherwise :attr:`n` builds one model to count them.
    extra_measures : callable ``(model) -> mapping of str to float``, optional
        Further measures of a trained model that :meth:`evaluate` adds to ``val_loss`` and
        ``val_ppl`` (a classifier's ``val_accuracy``, a held-out test split's ``test_loss`` ...).
        Called in eval mode without gradients; it moves what it needs to the model's device.
    name, metadata :
        As in :class:`~optkit.problem.Problem`.

    Notes
    -----
    The backend is always ``"torch"``; ``x0`` is ``None`` (a solver starts from
    :meth:`make_model`, or from a module given as ``x0``). ``counters`` counts the training
    micro-batches (``"batches"``) and their tokens (``"tokens"``) that went through :meth:`loss`;
    :meth:`evaluate` is not counted. Capabilities: ``{"loss"}``.
    """

    kind: ClassVar[str] = "training"

    def __init__(
        self,
        model_factory: Callable[[], Any],
        train_batches: Callable[[], Iterable[Any]],
        val_batches: Sequence[Any],
        *,
        tokens_per_batch: int,
        seed: int = 0,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        n_params: int | None = None,
        extra_measures: Callable[[Any], Mapping[str, float]] | None = None,
        name: str = "training",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(model_factory):
            raise ValueError(
                f"model_factory must be callable () -> torch.nn.Module, got {type(model_factory).__name__}"
            )
        if not callable(train_batches):
            raise ValueError(
                f"train_batches must be callable () -> iterator of token batches, got {type(train_batches).__name__}"
            )
        if isinstance(val_batches, (str, bytes)) or not isinstance(val_batches, Sequence) or not val_batches:
            raise ValueError(f"val_batches must be a non-empty sequence of token batches, got {val_batches!r:.80}")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable (model, batch) -> 0-d tensor, got {type(loss_fn).__name__}")
        if extra_measures is not None and not callable(extra_measures):
            raise ValueError(
                f"extra_measures must be callable (model) -> dict of measures, got {type(extra_measures).__name__}"
            )
        if not isinstance(device, str) or not device:
            raise ValueError(f"device must be a device string such as 'cpu' or 'cuda', got {device!r}")
        if dtype is not None:
            check_choice("dtype", dtype, DTYPES)
        super().__init__(name, None, metadata)
        self.model_factory = model_factory
        self._train_batches = train_batches
        self.val_batches = list(val_batches)
        self.tokens_per_batch = check_int("tokens_per_batch", tokens_per_batch, 1)
        self.seed = check_int("seed", seed, 0)
        self.loss_fn = loss_fn or causal_lm_loss
        self._device = device
        self._dtype = dtype
        self._n_params = None if n_params is None else check_int("n_params", n_params, 1)
        self.extra_measures = extra_measures

    # ------------------------------------------------------------------ Problem interface

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"loss"})

    @property
    def n(self) -> int:
        """Number of model parameters (counted on one built model unless given as ``n_params``)."""
        if self._n_params is None:
            self._n_params = sum(p.numel() for p in self.make_model().parameters())
        return self._n_params

    @property
    def backend(self) -> str:
        return "torch"

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> torch.dtype | None:
        """The parameter dtype (a ``torch.dtype``), or ``None`` when the factory's is kept."""
        if self._dtype is None:
            return None
        import torch

        return getattr(torch, self._dtype)

    def to(self, backend: str = "torch", device: str | None = None, dtype: Any = None) -> TrainingTask:
        """The same task with models and batches on ``device`` and parameters in ``dtype``.

        Parameters
        ----------
        backend : {"torch"}
            A training task trains torch modules; any other backend is a ``ValueError``.
        device : str, optional
            e.g. ``"cpu"``, ``"cuda"``; ``None`` keeps the current device.
        dtype : str or torch.dtype, optional
            One of ``float32, float64, bfloat16, float16``; ``None`` keeps the current one.
        """
        if backend != "torch":
            raise ValueError(f"backend must be 'torch' for a training task (it trains torch modules), got {backend!r}")
        if dtype is not None and not isinstance(dtype, str):
            dtype = str(dtype).removeprefix("torch.")
        out = TrainingTask(
            self.model_factory,
            self._train_batches,
            self.val_batches,
            tokens_per_batch=self.tokens_per_batch,
            seed=self.seed,
            loss_fn=self.loss_fn,
            device=device or self._device,
            dtype=dtype or self._dtype,
            n_params=self._n_params,
            extra_measures=self.extra_measures,
            name=self.name,
            metadata=self.metadata,
        )
        out.val_batches = [b.to(out.device) for b in self.val_batches]
        return out

    def evaluate(self, x: Any, extras: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Validation measures of the trained model ``x``, the same for every solver.

        Parameters
        ----------
        x : torch.nn.Module
            The trained model (``Result.x``).
        extras : mapping, optional
            Unused.

        Returns
        -------
        dict
            ``val_loss``: the mean of :attr:`loss_fn` over :attr:`val_batches` (nats per token;
            all validation batches have one shape, so this is the token mean), computed in eval
            mode without gradients; ``val_ppl``: ``exp(val_loss)``; then the measures of
            :attr:`extra_measures`, when the task has it (computed the same way). The model's
            train/eval mode is restored afterwards. Not counted in ``counters``.

        Raises
        ------
        ValueError
            When ``extra_measures`` returns ``val_loss`` or ``val_ppl`` (they would be overwritten).
        """
        import torch

        if not isinstance(x, torch.nn.Module):
            raise ValueError(f"x must be the trained torch.nn.Module, got {type(x).__name__}")
        device = next(x.parameters()).device
        was_training = x.training
        x.eval()
        try:
            with torch.no_grad():
                total = sum(float(self.loss_fn(x, batch.to(device))) for batch in self.val_batches)
                extra = dict(self.extra_measures(x)) if self.extra_measures is not None else {}
        finally:
            x.train(was_training)
        val_loss = total / len(self.val_batches)
        # exp overflows a float beyond ~709.78; such a loss is a diverged model anyway
        out = {"val_loss": val_loss, "val_ppl": math.exp(val_loss) if val_loss < 700 else math.inf}
        clash = sorted(out.keys() & extra.keys())
        if clash:
            raise ValueError(f"extra_measures must not return {', '.join(clash)}: evaluate() computes them")
        return {**out, **{name: float(value) for name, value in extra.items()}}

    # ------------------------------------------------------------------ what solvers use

    def make_model(self) -> torch.nn.Module:
        """A fresh model: ``model_factory()`` under the task's seed, moved to its device and dtype.

        The random stream of the caller is left as it was (the initialisation draws from a
        forked CPU stream), and the model is built on the CPU first, so the initial weights
        are the same on every device.
        """
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.model_factory()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model_factory must return a torch.nn.Module, got {type(model).__name__}")
        return model.to(device=self.device, dtype=self.dtype)

    def train_batches(self) -> Iterator[torch.Tensor]:
        """A fresh iterator over the training batches, each moved to the task's device.

        Yields
        ------
        torch.LongTensor of shape (batch, seq_len)
        """
        for batch in self._train_batches():
            yield batch.to(self.device, non_blocking=True)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """The training loss of ``model`` on ``batch`` (a 0-d tensor with its autograd graph).

        Counted: ``counters["batches"] += 1`` and ``counters["tokens"] += batch.numel()``.
        """
        self.counters["batches"] += 1
        self.counters["tokens"] += int(batch.numel())
        return self.loss_fn(model, batch)

    def __repr__(self) -> str:
        n = self._n_params if self._n_params is not None else "?"
        return f"TrainingTask(name={self.name!r}, n_params={n}, device={self.device!r})"
