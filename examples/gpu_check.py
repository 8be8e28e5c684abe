"""Every GPU comparison of optkit in one run, printed as one table.

Run on a machine with CUDA: ``python examples/gpu_check.py`` (a few minutes on one GPU).
``--target torch --small`` runs the same comparisons on the CPU with small sizes (a smoke test).

Comparisons (each anchored on the CPU baseline of the same run):

* ``cg`` on 3-D Poisson 128³ (2.1 M unknowns, 7-point), float64, on CUDA, against
  ``scipy-cg`` on the CPU, both to relative residual 1e-8 (issue: optkit core).
* ``sns`` against POT's ``sinkhorn_log``, both on CUDA in float64, to L1 marginal error
  1e-9 on the hard large OT cases: 2-D point clouds (squared-Euclidean cost / max) with
  reg = 2e-4, and random assignment with eta = 2.4 n, at n = 5000 and 20000 (issue: OT).
  POT runs under a time limit; a limited run reports the error it reached.
* GaLore on LLaMA-1B (byte vocabulary, bf16; issue: GaLore):
  - one refresh of the projectors of all 168 attention and MLP matrices at rank 512, on
    synthetic gradients of their shapes: galore-torch's exact SVD (the anchor) against
    optkit's ``svd``, ``randomized`` and ``dct`` sources;
  - 200 training steps of 16 x 256 tokens: ``adamw`` (the anchor), ``galore-torch``, and
    optkit's ``galore-adamw`` (randomized) and ``galore-adamw8bit`` layer-wise, reporting
    the final validation loss, steady tokens/s (after the first 10 steps) and peak memory.
* Q-GaLore (issue 16): LLaMA-1B (rank 512, 16 x 256 tokens) and LLaMA-7B (rank 1024,
  4 x 256 tokens) in bf16, 30 steps of layer-wise training each: ``galore-adamw8bit`` (the
  anchor) against ``q-galore`` (INT8 weights, INT4 bases), peak memory and steady tokens/s
  (the paper's claim: 7B pre-training in 16 GB).
* M-FAC (issue 11): one optimizer step at d = 10^7, m = 1024, float32 on CUDA, against the
  floor of two passes over the m x d window (the anchor) and the reference algorithm's step
  (``examples/mfac_step_cost.py``; ``--small``: d = 10^5, m = 64).

* Curvature analysis (issue 17): λ_max (Lanczos against power iteration, PyHessian's
  product budget), the Hutchinson trace (100 probes) and the SLQ density (5 x 80) of a
  64-512-10 tanh MLP's Hessian (38,410 weights) on all 1797 digits, float32 on CUDA:
  PyHessian (``cuda=True``, the anchor) against optkit (``examples/hessian_vs_pyhessian.py``'s
  runs; ``--small``: 64-16-10 on 300 digits). Accuracy is compared on the CPU, against the
  exact spectrum, by that example.

* FSDP2 (issue 18): GaLoreAdamW (randomized, rank 128) on llama-60m sharded by
  ``fully_shard`` over one rank (NCCL) against the same model unsharded (the anchor), 10 steps
  of 8 x 256 tokens: median step time, and the largest relative difference of the parameters
  after the steps (the sharded step must equal the unsharded one; ``--small``: llama-micro,
  gloo). A smoke test: several GPUs are needed for a sharding figure.

* BCD (issue 12): ``bcd`` on the paper's problem C (``bcd/C``: softmax regression, A 1000 x
  1000 dense, 50 classes) with variable blocks of 50, GSL selection and the matrix update, 100
  block updates: seconds per update (after the set-up, median over ``--repeat``) on numpy on
  the CPU (the anchor) against torch on the target (``--small``: ``m=100,d=40,n_classes=5``).
  Each update re-forms the (50, 1000) gradient from all the logits: one dense GEMM.

* DCDM (issue 13): ``dcdm`` with the shipped model on unseen pressure systems (the bunny
  geometry, 64³ and 128³; ``--small``: 16³), to relative residual 1e-6, the network and the
  iterate on the target, against PyAMG-preconditioned CG on the CPU (the anchor) and ``cg`` on
  the target.

``--sections`` picks which comparisons run.
"""

import argparse
import time

from optkit.bench import format_summary, run_benchmark


def comparisons(small: bool):
    """(problems, solvers, options) of each comparison."""
    n3 = 24 if small else 128
    # reg = 2e-4 (eta = 5000) on point clouds, eta = 2.4 n on random assignment; the smoke
    # test keeps the shapes of the runs but not their difficulty
    sizes = (100,) if small else (5000, 20000)
    ot_problems = [
        spec
        for n in sizes
        for spec in (
            f"ot/point-clouds:n={n},eta={100 if small else 5000}",
            f"ot/random-assignment:n={n},eta={100 if small else int(2.4 * n)}",
        )
    ]
    return [
        ([f"linear/poisson-3d:n={n3}"], ["scipy-cg", "cg@{target}"], {"tol": 1e-8}),
        (ot_problems, ["pot-sinkhorn-log@{target}", "sns@{target}"], {"tol": 1e-9, "time_limit": 60}),
        (
            [f"linear/pressure-3d:n={n},geometry=bunny,seed=1" for n in ((16,) if small else (64, 128))],
            ["pyamg", "cg@{target}", "dcdm@{target}"],
            {"tol": 1e-6, "max_iter": 5000},
        ),
    ]


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def galore_refresh_rows(device: str, small: bool) -> list[dict]:
    """Time one refresh of every attention/MLP projector of LLaMA-1B (bf16, rank 512)."""
    import torch
    from transformers import LlamaForCausalLM

    from optkit.projection import Projector
    from problems.llm import llama_config
    from solvers.lowrank import select_linear_modules

    size, rank = ("micro", 8) if small else ("1b", 512)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(size))
    modules = dict(model.named_modules())
    shapes = [tuple(modules[name].weight.shape) for name in select_linear_modules(model, "attn-mlp")]
    generator = torch.Generator(device).manual_seed(0)
    grads = [torch.randn(s, generator=generator, device=device).to(torch.bfloat16) for s in shapes]
    candidates = {}
    try:
        from galore_torch.galore_projector import GaLoreProjector

        candidates["galore-torch (svd)"] = lambda g: GaLoreProjector(rank, update_proj_gap=200).project(g, 0)
    except ImportError:
        pass
    for source in ("svd", "randomized", "dct"):
        projector = Projector(rank, source=source)
        candidates[f"optkit {source}"] = lambda g, p=projector: p.project(p.init_state(tuple(g.shape)), g, 0)
    rows, anchor = [], None
    problem = f"llama-{size}: refresh {len(shapes)} projectors"
    for name, refresh in candidates.items():
        refresh(grads[0])  # library set-up (cuSOLVER handles, FFT plans) out of the timing
        _synchronize(device)
        start = time.perf_counter()
        for g in grads:
            refresh(g)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        anchor = anchor or elapsed
        rows.append(
            {
                "problem": problem,
                "solver": name,
                "status": "converged",
                "refresh_s": elapsed,
                "time_s": elapsed,
                "ratio": elapsed / anchor,
            }
        )
    return rows


def _training_rows(problem: str, solvers: list[str], steps: int, target: str) -> list[dict]:
    """``steps`` bf16 training steps of each solver on ``problem``: loss, steady tokens/s (after the
    first 10 steps) and peak memory."""
    bench = run_benchmark(
        [problem],
        solvers,
        solver_options={"max_iter": steps, "eval_every": steps},
        backend="torch",
        device="cuda" if target == "cuda" else "cpu",
        dtype="bfloat16",
        progress=False,
        warmup=False,
    )
    runs = {run.solver: run for run in bench.runs}
    rows = []
    for row in bench.summary:
        trace = [r for r in runs[row["solver"]].trace if "tokens_per_s" in r]
        steady = (trace[-1]["tokens"] - trace[9]["tokens"]) / (trace[-1]["time"] - trace[9]["time"])
        peak = max(r["peak_mem_mb"] for r in trace) / 1024
        rows.append({**row, "message": f"steady {steady:,.0f} tok/s, peak {peak:.2f} GiB"})
    return rows


def galore_training_rows(target: str, small: bool) -> list[dict]:
    """200 steps of LLaMA-1B pre-training in bf16: loss, steady tokens/s and peak memory per recipe."""
    galore = "rank=512,update_proj_gap=200,scale=0.25,lr=0.01"
    problem = "llm/llama-micro:batch=4,seq=32" if small else "llm/llama-1b:batch=16,seq=256"
    solvers = [
        "adamw:lr=0.001",
        f"galore-torch:{galore}",
        f"galore-adamw:{galore},proj=randomized",
        f"galore-adamw8bit:{galore},proj=randomized,layerwise=true",
    ]
    return _training_rows(problem, solvers, 12 if small else 200, target)


def qgalore_rows(target: str, small: bool) -> list[dict]:
    """LLaMA-1B (rank 512) and 7B (rank 1024) in bf16, 30 steps: 8-bit layer-wise GaLore (the anchor)
    against layer-wise Q-GaLore (INT8 weights, INT4 bases), peak memory and steady tokens/s."""
    configs = (
        [("llm/llama-micro:batch=4,seq=32", 16)]
        if small
        else [
            ("llm/llama-1b:batch=16,seq=256", 512),
            ("llm/llama-7b:batch=4,seq=256", 1024),
        ]
    )
    rows = []
    for problem, rank in configs:
        options = f"rank={rank},update_proj_gap=200,scale=0.25,lr=0.004,proj=randomized,layerwise=true"
        solvers = [f"galore-adamw8bit:{options}", f"q-galore:{options}"]
        rows.extend(_training_rows(problem, solvers, 12 if small else 30, target))
    return rows


def mfac_rows(target: str, small: bool) -> list[dict]:
    """One M-FAC step against the two-pass floor and the reference's step (examples/mfac_step_cost.py)."""
    import torch
    from mfac_step_cost import SIZES, SMALL, measure

    device = torch.device("cuda" if target == "cuda" else "cpu")
    d, m = SMALL if small else SIZES[device.type]
    timings, _ = measure(d, m, steps=5, device=device, dtype=torch.float32, damp=1e-5)
    floor = timings[0][1]
    problem = f"mfac step d={d:.0e} m={m}"
    return [
        {"problem": problem, "solver": name, "status": "converged", "time_s": seconds, "ratio": seconds / floor}
        for name, seconds in timings
    ]


def hessian_rows(target: str, small: bool) -> list[dict]:
    """PyHessian against optkit on the GPU: λ_max, trace and SLQ density of a digits MLP's Hessian."""
    try:
        from hessian_vs_pyhessian import digits_data, optkit_runs, pyhessian_runs, trained_mlp
    except ImportError as exc:  # PyHessian (the `analysis` extra) or scikit-learn missing
        print(f"hessian section skipped: {exc}")
        return []

    hidden, batch_size = (16, 300) if small else (512, 1797)
    sizes = {"probes": 100, "slq_probes": 5, "slq_steps": 40 if small else 80}
    train, batch = digits_data(batch_size, seed=0)
    model = trained_mlp(train, hidden, epochs=2 if small else 20, seed=0)
    cuda = target == "cuda"
    if cuda:
        model, batch = model.cuda(), (batch[0].cuda(), batch[1].cuda())
    weights = sum(p.numel() for p in model.parameters())
    theirs = pyhessian_runs(model, batch, 0, sizes, cuda=cuda)
    ours = optkit_runs(model, batch, 0, sizes, {q: run[1] for q, run in theirs.items()}, "double-backward")
    rows = []
    for quantity in theirs:
        problem = f"hessian {quantity}, MLP 64-{hidden}-10 ({weights} weights), batch {batch_size}"
        anchor = theirs[quantity][2]
        for name, (value, hvps, seconds, _) in (("pyhessian", theirs[quantity]), ("optkit", ours[quantity])):
            # "nit": the Hessian-vector products; the SLQ density has no single value
            row = {"problem": problem, "solver": name, "status": "converged", "nit": hvps}
            row |= {"value": value} if value is not None else {}
            rows.append(row | {"time_s": seconds, "ratio": seconds / anchor})
    return rows


def fsdp2_rows(target: str, small: bool) -> list[dict]:
    """GaLoreAdamW on a one-rank FSDP2 model against the unsharded model: step time, parameter agreement."""
    import argparse
    import os
    import statistics

    import torch
    import torch.distributed as dist
    from distributed_step_time import free_port
    from pretrain_llama_galore import build
    from torchrun_pretrain_llama import wrap

    from problems.llm import llama_task

    device = torch.device("cuda" if target == "cuda" else "cpu")
    size, seq, steps = ("micro", 64, 4) if small else ("60m", 256, 10)
    args = argparse.Namespace(
        optimizer="galore-adamw",
        lr=0.01,
        scale=0.25,
        target="attn-mlp",
        layerwise=False,
        rank=128,
        gap=200,
        proj="randomized",
        steps=steps,
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        runs = {}
        for strategy in ("unsharded", "fsdp2"):
            task = llama_task(size, batch=8, seq=seq).to("torch", device.type, "float32")
            torch.manual_seed(0)
            model = task.make_model().to(device)
            if strategy == "fsdp2":
                model = wrap(model, "fsdp2", device)
            optimizer, _ = build(args, model)
            batches, seconds = task.train_batches(), []
            for _ in range(steps):
                batch = next(batches).to(device)
                _synchronize(device.type)
                start = time.perf_counter()
                task.loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _synchronize(device.type)
                seconds.append(time.perf_counter() - start)
            params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
            runs[strategy] = (statistics.median(seconds[1:]), [p.detach().float().cpu() for p in params])
    finally:
        dist.destroy_process_group()
    anchor = runs["unsharded"][0]
    difference = max(
        float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(runs["fsdp2"][1], runs["unsharded"][1])
    )
    problem = f"galore-adamw llama-{size}, {steps} steps, 1 rank"
    # "param_diff": the largest relative difference of a parameter from the unsharded run's
    return [
        {
            "problem": problem,
            "solver": "unsharded",
            "status": "converged",
            "param_diff": 0.0,
            "time_s": anchor,
            "ratio": 1.0,
        },
        {
            "problem": problem,
            "solver": "fsdp2",
            "status": "converged",
            "param_diff": difference,
            "time_s": runs["fsdp2"][0],
            "ratio": runs["fsdp2"][0] / anchor,
        },
    ]


def bcd_rows(target: str, small: bool, repeat: int) -> list[dict]:
    """``bcd`` on problem C, numpy (CPU) against torch on the target: seconds per block update."""
    import statistics

    problem = "bcd/C:m=100,d=40,n_classes=5" if small else "bcd/C"
    options = "partition=variable,selection=gsl,update=matrix,block_size=50"
    solvers = [f"bcd:{options}", f"bcd@{target}:{options}"]
    # tol far below reach: every run makes the same 100 updates
    bench = run_benchmark(
        [problem], solvers, solver_options={"max_iter": 100, "tol": 1e-300}, repeat=repeat, progress=False
    )
    rows, anchor = [], None
    for solver in solvers:
        runs = [run for run in bench.runs if run.solver == solver]
        # the trace's clock from the first record (after init) to the last: the updates alone
        per_update = statistics.median((run.trace[-1]["time"] - run.trace[0]["time"]) / run.nit for run in runs)
        anchor = anchor or per_update
        row = {"problem": f"{problem} (s per update)", "solver": solver.split(":")[0], "status": runs[0].status}
        rows.append(row | {"nit": runs[0].nit, "time_s": per_update, "ratio": per_update / anchor})
    return rows


def main(target: str, small: bool, repeat: int, sections: list[str]) -> None:
    rows = []
    for name, (problems, solvers, options) in zip(("cg", "ot", "dcdm"), comparisons(small)):
        if name not in sections:
            continue
        bench = run_benchmark(
            problems,
            [s.format(target=target) for s in solvers],
            solver_options=options,
            repeat=repeat,
            progress=False,
        )
        rows.extend(bench.summary)
    if "galore" in sections:
        rows.extend(galore_refresh_rows("cuda" if target == "cuda" else "cpu", small))
        rows.extend(galore_training_rows(target, small))
    if "qgalore" in sections:
        rows.extend(qgalore_rows(target, small))
    if "mfac" in sections:
        rows.extend(mfac_rows(target, small))
    if "hessian" in sections:
        rows.extend(hessian_rows(target, small))
    if "fsdp2" in sections:
        rows.extend(fsdp2_rows(target, small))
    if "bcd" in sections:
        rows.extend(bcd_rows(target, small, repeat))
    print(format_summary(rows, note_width=None))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cuda", choices=("cuda", "torch"), help="where the GPU solvers run")
    parser.add_argument("--small", action="store_true", help="small sizes (CPU smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    sections = ["cg", "ot", "galore", "qgalore", "mfac", "hessian", "fsdp2", "bcd", "dcdm"]
    parser.add_argument("--sections", nargs="+", default=sections, choices=sections)
    args = parser.parse_args()
    main(args.target, args.small, args.repeat, args.sections)
