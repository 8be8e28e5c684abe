# Two commands set everything up on a fresh machine:
#   make demo   installs, then runs the demo benchmark (table + plots in demo-results/)
#   make test   installs, then runs the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch; a bare `pip install torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo-results
# Each problem's anchor (ratio 1.00) is the first solver in this list that runs on it.
DEMO_SOLVERS ?= scipy-cg,cg,pcg:preconditioner=ichol,pyamg,scipy-lbfgsb,pot-sinkhorn-log,sinkhorn,sns,scipy-trust-constr,alm-sketch,alm-newton,$(DEMO_TRAINERS)
# the training task of the demo (llm/llama-micro): AdamW against GaLore with an SVD-free projector
DEMO_TRAINERS ?= adamw:max_iter=150,lr=3e-3,galore-adamw:max_iter=150,lr=0.01,rank=16,update_proj_gap=50,scale=0.25,proj=randomized
# cyipopt (the `ipopt` baseline) has no binary wheel: it builds against a system Ipopt.
IPOPT_APT ?= coinor-libipopt-dev liblapack-dev libblas-dev pkg-config gcc

.PHONY: install install-ipopt install-test demo test clean

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[torch,ml,bcd,dcdm,pyamg,ot,regot,cutest,llm,finetune,curvature,analysis]"

# Ipopt from Debian's packages (only as root with apt-get), then cyipopt; without Ipopt the
# ipopt tests are skipped.
install-ipopt:
	@if $(PYTHON) -c "import cyipopt" 2>/dev/null; then exit 0; fi; \
	if ! pkg-config --exists ipopt 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Ipopt: apt-get install $(IPOPT_APT)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IPOPT_APT); \
		else \
			echo "Ipopt is not installed and this is not a root shell with apt-get: the ipopt tests will be" \
				"skipped (as root: apt-get install $(IPOPT_APT); then pip install cyipopt)"; \
			exit 0; \
		fi; \
	fi; \
	echo "Building cyipopt against Ipopt $$(pkg-config --modversion ipopt)"; \
	$(PIP) install --quiet cyipopt

install-test: install install-ipopt
	$(PIP) install --quiet -e ".[all]"

demo: install
	$(PYTHON) -m optkit.cli bench demo --solvers $(DEMO_SOLVERS) --out $(OUT) --repeat 1
	$(PYTHON) -m optkit.cli report $(OUT)
	@echo "Report: $(OUT)/index.html"

test: install-test
	$(PYTHON) -m pytest

clean:
	rm -rf $(OUT) .pytest_cache build dist *.egg-info
