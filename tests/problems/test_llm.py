"""llm/* problems: byte tokenizer, the stdlib corpus and its split by file, LLaMA configs, the tasks."""

import math

import numpy as np
import pytest

import optkit
from problems import llm
from problems.llm import LLAMA_SIZES, ByteTokenizer, is_validation_file, llama_param_count, load_corpus

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_every_byte():
    tok = ByteTokenizer()
    data = bytes(range(256)) + bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    ids = tok.encode(data)
    assert ids.dtype == np.uint8 and ids.shape == (1256,)
    assert tok.decode_bytes(ids) == data
    assert tok.decode_bytes(torch.from_numpy(ids.astype(np.int64))) == data


def test_tokenizer_text_is_utf8():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'héllo, 世界' + x  # ∑\n"
    np.testing.assert_array_equal(tok.encode("é"), [0xC3, 0xA9])
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character cannot be text
    with pytest.raises(ValueError, match="ids must lie in 0..255"):
        tok.decode([300])
    with pytest.raises(ValueError, match="text must be str or bytes"):
        tok.encode(3)


# ----------------------------------------------------------------------------- corpus


@pytest.fixture
def source_tree(tmp_path):
    root = tmp_path / "lib"
    files = {f"pkg{k % 7}/mod_{k}.py": f"# module {k}\nx = {k}\n" for k in range(120)}
    files["top.py"] = "print('top')\n"
    excluded = ["site-packages/third.py", "dist-packages/other.py", "pkg0/__pycache__/mod_0.py", "notes.txt"]
    for rel in [*files, *excluded]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(files.get(rel, "skipped = True\n"))
    return root, files


def test_split_is_by_file_disjoint_and_deterministic(source_tree, tmp_path):
    root, files = source_tree
    corpus = load_corpus(root, tmp_path / "cache")
    names = sorted(files)
    assert set(corpus.train_files).isdisjoint(corpus.val_files)
    assert sorted(corpus.train_files + corpus.val_files) == names
    assert list(corpus.train_files) == sorted(corpus.train_files)
    assert [f for f in names if is_validation_file(f)] == list(corpus.val_files)
    # each split is its files' bytes joined by NUL, in sorted order
    for split, chosen in ((corpus.train, corpus.train_files), (corpus.val, corpus.val_files)):
        expected = b"\x00".join(files[f].encode() for f in chosen)
        assert split.dtype == np.uint8 and split.tobytes() == expected
    # cached: one file keyed by the Python version, read back identically
    cached = list((tmp_path / "cache").glob("stdlib-py*.npz"))
    assert len(cached) == 1 and ".".join(map(str, __import__("sys").version_info[:3])) in cached[0].name
    llm._load.cache_clear()
    again = load_corpus(root, tmp_path / "cache")
    np.testing.assert_array_equal(again.train, corpus.train)
    assert again.val_files == corpus.val_files


def test_validation_fraction():
    # a hash split: the count of 20000 names is binomial(20000, 0.05): mean 1000, std 30.8
    names = [f"lib/module_{k}.py" for k in range(20000)]
    count = sum(map(is_validation_file, names))
    assert abs(count - 1000) < 4 * math.sqrt(20000 * 0.05 * 0.95)


def test_stdlib_corpus():
    corpus = load_corpus()
    assert not any("site-packages/" in f for f in corpus.train_files + corpus.val_files)
    assert set(corpus.train_files).isdisjoint(corpus.val_files)
    assert "os.py" in corpus.train_files + corpus.val_files
    n_files = len(corpus.train_files) + len(corpus.val_files)
    assert n_files > 500 and abs(len(corpus.val_files) / n_files - 0.05) < 0.02
    assert len(corpus.train) > 5_000_000 and len(corpus.val) > 100_000
    assert (corpus.train == 0).sum() == len(corpus.train_files) - 1  # NUL only between files


# ----------------------------------------------------------------------------- models


def closed_form(hidden, ffn, layers, vocab):
    embedding = lm_head = vocab * hidden
    return embedding + layers * (4 * hidden**2 + 3 * hidden * ffn + 2 * hidden) + hidden + lm_head


# (hidden, ffn, heads, layers) of the GaLore paper's configs (Table 5, configs/llama_*.json)
PAPER = {
    "60m": (512, 1376, 8, 8),
    "130m": (768, 2048, 12, 12),
    "350m": (1024, 2736, 16, 24),
    "1b": (2048, 5461, 32, 24),
}


@pytest.mark.parametrize("size", list(LLAMA_SIZES))
def test_parameter_counts(size):
    s = LLAMA_SIZES[size]
    if size in PAPER:
        assert (s.hidden, s.ffn, s.heads, s.layers) == PAPER[size]
    for vocab in (256, 32000):
        expected = closed_form(s.hidden, s.ffn, s.layers, vocab)
        assert llama_param_count(size, vocab) == expected
        from transformers import LlamaForCausalLM

        with torch.device("meta"):  # shapes only: the 7B model allocates nothing
            model = LlamaForCausalLM(llm.llama_config(size, vocab_size=vocab))
        assert sum(p.numel() for p in model.parameters()) == expected


def test_parameter_counts_of_built_models_and_the_paper():
    for size in ("micro", "tiny"):
        task = optkit.get_problem(f"llm/llama-{size}")
        model = task.make_model()
        assert sum(p.numel() for p in model.parameters()) == llama_param_count(size) == task.n
    assert llama_param_count("tiny") == 10_818_432
    # with the paper's 32000 ids: LLaMA-7B's known 6,738,415,616; the GaLore sizes 58M ... 1.34B
    assert llama_param_count("7b", 32000) == 6_738_415_616
    millions = [round(llama_param_count(s, 32000) / 1e6, 1) for s in ("60m", "130m", "350m", "1b")]
    assert millions == [58.1, 134.1, 368.0, 1339.1]


def test_untrained_model_predicts_about_uniformly():
    task = optkit.get_problem("llm/llama-micro")
    val_loss = task.evaluate(task.make_model())["val_loss"]
    # logits = W z with W ~ N(0, 0.02^2) (initializer_range) and |z|^2 = h after the final RMSNorm,
    # so every logit has std s = 0.02 sqrt(h) = 0.16: the cross-entropy is ln 256 + s^2/2 (the
    # log-sum-exp) minus a target-logit term of mean 0 and std s * sqrt(sum_t p_t^2) < s
    s = 0.02 * math.sqrt(LLAMA_SIZES["micro"].hidden)
    np.testing.assert_allclose(val_loss, math.log(256) + s**2 / 2, atol=s)


# ----------------------------------------------------------------------------- tasks


def test_task_batches_and_metadata():
    task = optkit.get_problem("llm/llama-micro:batch=3,seq=20,n_val_batches=2,max_bytes=5000,seed=4")
    corpus = load_corpus()
    assert task.name == "llm/llama-micro" and task.tokens_per_batch == 60
    meta = task.metadata
    assert meta["n_params"] == llama_param_count("micro") and meta["n_params_paper_vocab"] == llama_param_count(
        "micro", 32000
    )
    assert (meta["batch"], meta["seq"], meta["train_bytes"], meta["vocab_size"]) == (3, 20, 5000, 256)
    head = corpus.train[:5000].tobytes()
    stream = task.train_batches()
    batches = [next(stream) for _ in range(4)]
    for batch in batches:
        assert batch.shape == (3, 20) and batch.dtype == torch.int64
        assert all(bytes(row.tolist()) in head for row in batch)  # windows of the capped train split
    np.testing.assert_array_equal(next(task.train_batches()).numpy(), batches[0].numpy())
    assert not torch.equal(next(optkit.get_problem("llm/llama-micro:batch=3,seq=20").train_batches()), batches[0])
    val = task.val_batches
    assert len(val) == 2 and all(b.shape == (3, 20) for b in val)
    np.testing.assert_array_equal(val[0][0].numpy(), corpus.val[:20])  # evenly spaced, first and last
    np.testing.assert_array_equal(val[-1][-1].numpy(), corpus.val[-20:])


def test_registered():
    names = optkit.list_problems()
    assert {f"llm/llama-{s}" for s in LLAMA_SIZES} <= set(names)
    assert optkit.get_suite("llm-cpu") == ["llm/llama-tiny"]
    assert "llm/stdlib-corpus" in [ds.name for ds, _ in optkit.data.list_datasets()]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("llm/llama-micro:batch=0", "batch must be an integer >= 1"),
        ("llm/llama-micro:seq=1", "seq must be an integer >= 2"),
        ("llm/llama-micro:seed=-1", "seed must be"),
        ("llm/llama-micro:n_val_batches=0", "n_val_batches must be"),
        ("llm/llama-micro:seq=64,max_bytes=10", "max_bytes must be an integer >= 64"),
        ("llm/llama-micro:batch=2.5", "batch must be an integer"),
    ],
)
def test_bad_parameters_name_them(spec, match):
    with pytest.raises(ValueError, match=match):
        optkit.get_problem(spec)


def test_bad_size_and_unknown_parameter():
    with pytest.raises(ValueError, match="size must be one of"):
        llm.llama_task("3b")
    with pytest.raises(TypeError, match="unknown parameter"):
        optkit.get_problem("llm/llama-micro:hidden=3")
