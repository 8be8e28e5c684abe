"""LLaMA-style language-model pre-training tasks on a text corpus that every machine has.

The corpus is the Python standard library's own source: every ``*.py`` file under
``sysconfig.get_paths()["stdlib"]`` (``site-packages``/``dist-packages`` excluded), in sorted
order, split into train and validation **by file** (a file is in validation when the SHA-256 of
its relative path falls in the first ``VAL_FRACTION`` of the hash range, about 5%), the files of
each split joined with a NUL byte. It is tokenised with :class:`ByteTokenizer` (UTF-8 bytes are
the ids 0..255; NUL, id 0, is the file separator: no CPython source file holds one, and a file
that did would be left out). No download and no trained tokenizer: the same corpus everywhere a
given Python version is installed. The encoded corpus is cached as ``uint8`` arrays in
``optkit.data.data_dir()/llm/stdlib-py<version>-<path digest>.npz`` (built once, a few seconds).

Models are ``transformers.LlamaForCausalLM`` built from a ``LlamaConfig`` (never from a hub),
with the GaLore paper's shapes (``LLAMA_SIZES``) and a vocabulary of 256 byte ids. The paper
uses a 32000-token vocabulary, so its parameter counts differ by ``2 * hidden * (32000 - 256)``
(embedding and untied output layer); ``metadata`` reports both, see :func:`llama_param_count`.

Registered problems: ``llm/llama-micro``, ``llm/llama-tiny`` (CPU sizes), ``llm/llama-60m``,
``llm/llama-130m``, ``llm/llama-350m``, ``llm/llama-1b``, ``llm/llama-7b``, each with the
parameters ``batch, seq, seed, n_val_batches, max_bytes``; suites ``llm-cpu`` (the tiny task)
and ``llm-paper`` (60M to 1B).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from optkit.data import Dataset, data_dir, register_dataset
from optkit.registry import register_problem, register_suite
from optkit.training import TrainingTask
from optkit.validation import check_int

__all__ = [
    "LLAMA_SIZES",
    "PAPER_VOCAB_SIZE",
    "VAL_FRACTION",
    "ByteTokenizer",
    "Corpus",
    "LlamaSize",
    "corpus_files",
    "is_validation_file",
    "llama_config",
    "llama_param_count",
    "llama_task",
    "load_corpus",
]

#: Fraction of the hash range (hence, about, of the files) that goes to validation.
VAL_FRACTION = 0.05
#: The vocabulary of the GaLore paper's LLaMA configs (the T5 tokenizer of C4).
PAPER_VOCAB_SIZE = 32000
_SEPARATOR = b"\x00"
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_CACHE_VERSION = 1


class ByteTokenizer:
    """Byte-level tokenizer: the UTF-8 bytes of a text are its token ids (0..255).

    Nothing to train and nothing unknown: every text round-trips exactly through
    :meth:`encode` / :meth:`decode_bytes`. No special tokens; the corpus uses NUL (id 0) to
    separate files.
    """

    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids of ``text``: a ``uint8`` array of shape (n_bytes,) (a ``str`` is UTF-8 encoded)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, (bytes, bytearray)):
            raise ValueError(f"text must be str or bytes, got {type(text).__name__}")
        return np.frombuffer(bytes(text), dtype=np.uint8).copy()

    def decode_bytes(self, ids: Any) -> bytes:
        """The bytes of token ids ``ids`` (any integer array or sequence, values in 0..255)."""
        arr = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"ids must lie in 0..255, got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8).tobytes()

    def decode(self, ids: Any) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True, eq=False)
class Corpus:
    """The encoded corpus.

    Attributes
    ----------
    train, val : ndarray of uint8, shape (n_bytes,)
        The byte ids of each split: its files in sorted order joined by NUL (id 0).
    train_files, val_files : tuple of str
        The files of each split (paths relative to ``root``, ``/``-separated, sorted).
    root : str
        The directory the files were read from.
    """

    train: np.ndarray
    val: np.ndarray
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    root: str


def stdlib_root() -> Path:
    """The standard library's source directory, ``sysconfig.get_paths()["stdlib"]``."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: str | Path | None = None) -> list[str]:
    """The ``*.py`` files under ``root`` (default: :func:`stdlib_root`), as sorted ``/``-separated
    relative paths, leaving out anything below a ``site-packages``, ``dist-packages`` or
    ``__pycache__`` directory (installed third-party packages are not the standard library)."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise ValueError(f"root must be an existing directory, got {str(root)!r}")
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def is_validation_file(rel_path: str) -> bool:
    """Whether the file ``rel_path`` (relative, ``/``-separated) belongs to the validation split.

    Decided by the SHA-256 of the path alone, so the split is the same on every machine and
    does not move when other files come or go.
    """
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < VAL_FRACTION * 2**64


def _cache_path(root: Path, cache_dir: Path) -> Path:
    version = ".".join(map(str, sys.version_info[:3]))
    digest = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:10]
    return cache_dir / f"stdlib-py{version}-{digest}-v{_CACHE_VERSION}.npz"


def _build(root: Path) -> dict[str, np.ndarray]:
    chunks: dict[bool, list[bytes]] = {False: [], True: []}
    files: dict[bool, list[str]] = {False: [], True: []}
    for rel in corpus_files(root):
        data = (root / rel).read_bytes()
        if _SEPARATOR in data:  # would be read as a file boundary
            continue
        split = is_validation_file(rel)
        chunks[split].append(data)
        files[split].append(rel)
    if not files[False] or not files[True]:
        raise ValueError(f"root {str(root)!r} holds too few *.py files for a train/validation split")
    return {
        "train": np.frombuffer(_SEPARATOR.join(chunks[False]), dtype=np.uint8),
        "val": np.frombuffer(_SEPARATOR.join(chunks[True]), dtype=np.uint8),
        "train_files": np.array(files[False]),
        "val_files": np.array(files[True]),
    }


@lru_cache(maxsize=4)
def _load(root: str, cache_dir: str) -> Corpus:
    path = _cache_path(Path(root), Path(cache_dir))
    if path.is_file():
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        arrays = _build(Path(root))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # written under a private name and renamed: concurrent builders never see half a file
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError:  # a read-only data directory: use the corpus uncached
            pass
    return Corpus(
        train=arrays["train"],
        val=arrays["val"],
        train_files=tuple(str(f) for f in arrays["train_files"]),
        val_files=tuple(str(f) for f in arrays["val_files"]),
        root=root,
    )


def load_corpus(root: str | Path | None = None, cache_dir: str | Path | None = None) -> Corpus:
    """The encoded corpus of ``root``'s ``*.py`` files, built on first use and cached.

    Parameters
    ----------
    root : str or Path, optional
        The source tree; default :func:`stdlib_root`.
    cache_dir : str or Path, optional
        Where the ``.npz`` cache lives; default ``optkit.data.data_dir() / "llm"``. The file
        name holds the Python version and a digest of ``root``. When the directory cannot be
        written the corpus is built and used without a cache.

    Returns
    -------
    Corpus
    """
    root = Path(root) if root is not None else stdlib_root()
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir() / "llm"
    return _load(str(root), str(cache_dir))


register_dataset(
    Dataset(
        "llm/stdlib-corpus",
        (f"llm/{_cache_path(stdlib_root(), Path('.')).name}",),
        "this Python's standard-library sources as bytes, train/validation by file; built on first use",
    )
)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LlamaSize:
    """The shape of a LLaMA model: hidden size, FFN (intermediate) size, attention heads, layers."""

    hidden: int
    ffn: int
    heads: int
    layers: int


#: The GaLore paper's configs (Table 5 and ``configs/llama_*.json``; 1B: 32 heads, 24 layers as
#: in the repository's config) plus two CPU sizes: ``micro`` (tests) and ``tiny`` (about 10M).
LLAMA_SIZES = {
    "micro": LlamaSize(64, 172, 4, 2),
    "tiny": LlamaSize(384, 1024, 6, 6),
    "60m": LlamaSize(512, 1376, 8, 8),
    "130m": LlamaSize(768, 2048, 12, 12),
    "350m": LlamaSize(1024, 2736, 16, 24),
    "1b": LlamaSize(2048, 5461, 32, 24),
    "7b": LlamaSize(4096, 11008, 32, 32),
}


def _size(size: str | LlamaSize) -> LlamaSize:
    if isinstance(size, LlamaSize):
        return size
    if size not in LLAMA_SIZES:
        raise ValueError(f"size must be one of {', '.join(map(repr, LLAMA_SIZES))}, got {size!r}")
    return LLAMA_SIZES[size]


def llama_param_count(size: str | LlamaSize, vocab_size: int = ByteTokenizer.vocab_size) -> int:
    """Parameters of a LLaMA model, in closed form.

    ``V h`` (embedding) ``+ L (4 h^2 + 3 h f + 2 h)`` (attention q, k, v, o; gated MLP; two
    RMSNorm weights per layer) ``+ h`` (final norm) ``+ V h`` (untied output layer), with ``V``
    the vocabulary, ``h`` the hidden size, ``f`` the FFN size and ``L`` the layers. The GaLore
    paper's sizes count ``V = PAPER_VOCAB_SIZE``; the byte-level tasks here have ``V = 256``.
    """
    s = _size(size)
    vocab_size = check_int("vocab_size", vocab_size, 1)
    h, f = s.hidden, s.ffn
    return 2 * vocab_size * h + s.layers * (4 * h * h + 3 * h * f + 2 * h) + h


def llama_config(size: str | LlamaSize, vocab_size: int = ByteTokenizer.vocab_size, seq_len: int = 256) -> Any:
    """A ``transformers.LlamaConfig`` of ``size`` (a name of :data:`LLAMA_SIZES` or a :class:`LlamaSize`).

    As the GaLore configs: SiLU gated MLP, RMSNorm eps 1e-6, untied output layer, init std 0.02;
    ``max_position_embeddings = seq_len``; no KV cache (training only); NUL (id 0) is the
    end-of-sequence id of the byte vocabulary, and there are no BOS or padding ids.
    """
    from optkit.backend import optional_import

    transformers = optional_import("transformers", "the llm/* problems")
    s = _size(size)
    return transformers.LlamaConfig(
        vocab_size=check_int("vocab_size", vocab_size, 1),
        hidden_size=s.hidden,
        intermediate_size=s.ffn,
        num_attention_heads=s.heads,
        num_hidden_layers=s.layers,
        max_position_embeddings=check_int("seq_len", seq_len, 1),
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )


@dataclass(frozen=True)
class _LlamaFactory:
    """``() -> LlamaForCausalLM``: picklable, so a task can go to joblib workers."""

    size: LlamaSize
    vocab_size: int
    seq_len: int

    def __call__(self) -> Any:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(llama_config(self.size, self.vocab_size, self.seq_len))


@dataclass(frozen=True, eq=False)
class _WindowStream:
    """``() -> iterator``: endless batches of ``batch`` windows of ``seq`` bytes at seeded random offsets."""

    data: np.ndarray
    batch: int
    seq: int
    seed: int

    def __call__(self) -> Iterator[Any]:
        import torch

        rng = np.random.default_rng(self.seed)
        span = np.arange(self.seq)
        while True:
            offsets = rng.integers(0, len(self.data) - self.seq + 1, size=self.batch)
            yield torch.from_numpy(self.data[offsets[:, None] + span].astype(np.int64))


def llama_task(
    size: str | LlamaSize = "tiny",
    *,
    batch: int = 8,
    seq: int = 128,
    seed: int = 0,
    n_val_batches: int = 8,
    max_bytes: int | None = None,
    corpus: Corpus | None = None,
    name: str | None = None,
) -> TrainingTask:
    """Byte-level causal language modelling of the stdlib corpus with a LLaMA model of ``size``.

    Parameters
    ----------
    size : str or LlamaSize
        A key of :data:`LLAMA_SIZES` or explicit dimensions.
    batch : int
        Sequences per training (and validation) batch.
    seq : int
        Tokens (bytes) per sequence, >= 2; a batch is a ``LongTensor`` of shape (batch, seq)
        and predicts ``batch * (seq - 1)`` next tokens.
    seed : int
        Seed of the model initialisation and of the training stream.
    n_val_batches : int
        Validation batches: ``n_val_batches * batch`` windows evenly spaced over the
        validation split (the same for every seed).
    max_bytes : int, optional
        Train on the first ``max_bytes`` bytes of the train split only (small tests).
    corpus : Corpus, optional
        Default :func:`load_corpus` ``()``.
    name : str, optional
        Default ``"llm/llama-<size>"``.

    Returns
    -------
    TrainingTask
        Training batches are windows at seeded uniform random offsets in the train split
        (with replacement; an endless stream). ``metadata`` holds the shape, ``n_params`` (this
        vocabulary) and ``n_params_paper_vocab`` (32000 ids, the paper's count), the batch
        shape and the corpus sizes.
    """
    dims = _size(size)
    batch = check_int("batch", batch, 1)
    seq = check_int("seq", seq, 2)
    seed = check_int("seed", seed, 0)
    n_val_batches = check_int("n_val_batches", n_val_batches, 1)
    if max_bytes is not None:
        max_bytes = check_int("max_bytes", max_bytes, seq)
    corpus = corpus if corpus is not None else load_corpus()
    train = corpus.train if max_bytes is None else corpus.train[:max_bytes]
    if len(train) < seq or len(corpus.val) < seq:
        raise ValueError(f"seq={seq} is longer than the corpus splits ({len(train)} / {len(corpus.val)} bytes)")
    starts = np.linspace(0, len(corpus.val) - seq, n_val_batches * batch).round().astype(np.int64)
    windows = corpus.val[starts[:, None] + np.arange(seq)].astype(np.int64)

    import torch

    val_batches = list(torch.from_numpy(windows).split(batch))
    label = name or f"llm/llama-{size if isinstance(size, str) else 'custom'}"
    tokenizer = ByteTokenizer()
    metadata = {
        "source": f"byte-level CPython {sys.version.split()[0]} standard-library sources ({corpus.root})",
        "size": size if isinstance(size, str) else "custom",
        "hidden": dims.hidden,
        "ffn": dims.ffn,
        "heads": dims.heads,
        "layers": dims.layers,
        "vocab_size": tokenizer.vocab_size,
        "n_params": llama_param_count(dims, tokenizer.vocab_size),
        "n_params_paper_vocab": llama_param_count(dims, PAPER_VOCAB_SIZE),
        "batch": batch,
        "seq": seq,
        "seed": seed,
        "n_val_batches": n_val_batches,
        "train_bytes": int(len(train)),
        "val_bytes": int(len(corpus.val)),
        "n_train_files": len(corpus.train_files),
        "n_val_files": len(corpus.val_files),
    }
    return TrainingTask(
        _LlamaFactory(dims, tokenizer.vocab_size, seq),
        _WindowStream(train, batch, seq, seed),
        val_batches,
        tokens_per_batch=batch * seq,
        seed=seed,
        n_params=metadata["n_params"],
        name=label,
        metadata=metadata,
    )


# ----------------------------------------------------------------------------- registration

# size -> (default batch, default seq): CPU-friendly for the small ones, the paper's 256 otherwise
_DEFAULTS = {"micro": (8, 32), "tiny": (8, 128)}


def _register(size: str) -> None:
    default_batch, default_seq = _DEFAULTS.get(size, (8, 256))
    dims = LLAMA_SIZES[size]

    def factory(
        batch: int = default_batch,
        seq: int = default_seq,
        seed: int = 0,
        n_val_batches: int = 8,
        max_bytes: int | None = None,
    ) -> TrainingTask:
        return llama_task(size, batch=batch, seq=seq, seed=seed, n_val_batches=n_val_batches, max_bytes=max_bytes)

    n_byte = llama_param_count(size) / 1e6
    n_paper = llama_param_count(size, PAPER_VOCAB_SIZE) / 1e6
    factory.__name__ = factory.__qualname__ = f"llama_{size}"
    factory.__doc__ = (
        f"LLaMA-{size} (hidden {dims.hidden}, FFN {dims.ffn}, {dims.heads} heads, {dims.layers} layers; "
        f"{n_byte:.1f}M params, {n_paper:.1f}M with the paper's 32000 vocab) on byte-level stdlib text.\n\n"
        "See :func:`problems.llm.llama_task` for the parameters."
    )
    register_problem(f"llm/llama-{size}")(factory)


for _name in LLAMA_SIZES:
    _register(_name)

register_suite("llm-cpu", ["llm/llama-tiny"])
register_suite("demo", ["llm/llama-micro"], extend=True)
register_suite("llm-paper", ["llm/llama-60m", "llm/llama-130m", "llm/llama-350m", "llm/llama-1b"])
