"""The worked examples of docs/architecture.md's contributor guide run as written."""

import re
from pathlib import Path

import numpy as np

import optkit
from optkit.registry import scoped_registrations

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def guide_code() -> list[str]:
    text = GUIDE.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index("## Contributor guide"):], re.S)


def test_the_worked_solver_and_problem_run_and_meet_the_contract():
    blocks = guide_code()
    assert len(blocks) == 2
    with scoped_registrations():
        for block in blocks:
            exec(compile(block, str(GUIDE), "exec"), {})
        res = optkit.solve("ml/least-squares", "gradient-descent:lr=0.5", tol=1e-8, max_iter=10_000)
        assert res.status is optkit.Status.CONVERGED
        p = optkit.get_problem("ml/least-squares")
        np.testing.assert_allclose(res.x, p.metadata["x_opt"], atol=1e-6)
        rosen = optkit.get_problem("ml/rosenbrock:n=6")
        res = optkit.solve(rosen, "scipy-lbfgsb", tol=1e-9, max_iter=1000)
        np.testing.assert_allclose(res.x, np.ones(6), atol=1e-6)
        # the gradient against central differences
        x = np.linspace(-1, 1, 6)
        e = np.eye(6) * 1e-6
        fd = [(rosen.fun(x + e[i]) - rosen.fun(x - e[i])) / 2e-6 for i in range(6)]
        np.testing.assert_allclose(rosen.grad(x), fd, rtol=1e-6, atol=1e-6)
    assert "gradient-descent" not in optkit.list_solvers()
