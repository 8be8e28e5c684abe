# Two commands set everything up on a fresh machine:
#   make demo   installs, then runs the demo benchmark (table + plots in demo-results/)
#   make test   installs, then runs the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch; a bare `pip install torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo-results
# Each problem's anchor (ratio 1.00) is the first solver in this list that runs on it.
DEMO_SOLVERS ?= scipy-cg,cg,pcg:preconditioner=ichol,pyamg,scipy-lbfgsb,pot-sinkhorn-log,sinkhorn,sns

.PHONY: install install-test demo test clean

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[torch,ml,pyamg,ot]"

install-test: install
	$(PIP) install --quiet -e ".[all]"

demo: install
	$(PYTHON) -m optkit.cli bench demo --solvers $(DEMO_SOLVERS) --out $(OUT) --repeat 1
	$(PYTHON) -m optkit.cli report $(OUT)
	@echo "Report: $(OUT)/index.html"

test: install-test
	$(PYTHON) -m pytest

clean:
	rm -rf $(OUT) .pytest_cache build dist *.egg-info
