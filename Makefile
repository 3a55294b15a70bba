# Every target sets up the virtual environment on first use (and again when the
# dependencies change), so a fresh clone needs no separate set-up step.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MNIST  ?= ../shared/datasets/mnist
EPOCHS ?= 10
MINUTES ?= 4
RUNS ?= runs
# etcd + kube-apiserver for the operator tests: built once (≈5 min), then cached.
ENVTEST ?= ../shared/k8s-envtest/build.sh

# Headless Chromium and its driver for the MLflow run-page test (tests/test_mlflow_ui.py):
# Debian's packages, installed once when missing (as root, else through sudo).
BROWSER := $(VENV)/.browser
# Where that test keeps its screenshots of the run page.
export GANOPS_TEST_ARTIFACTS ?= $(CURDIR)/test-artifacts

.PHONY: setup browser mnist test test-fast test-heavy test-learning test-gpu lint e2e bench bench-ci docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt holds torch at the CPU wheel; unpinned, pip pulls GBs of CUDA.
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

$(BROWSER): $(STAMP)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; \
	fi
	touch $(BROWSER)

browser: $(BROWSER)

# The main job, sized for a 2-core CPU with no internet: the local MNIST test split, 10 epochs
# (1,560 steps: 3 min 37 s on a 2-core AVX2 EPYC; see jobs/mnist_dcgan.yaml), stopped cleanly at
# MINUTES of training on a slower machine; then the test suite's MNIST classifier judges the
# generator (trained once, ~25 s, on first use) and says whether it draws digits.
mnist: $(STAMP)
	$(VENV)/bin/ganops submit jobs/mnist_dcgan.yaml --set spec.data.root=$(MNIST) --set spec.data.split=test \
	  --set spec.train.epochs=$(EPOCHS) --set spec.train.max_minutes=$(MINUTES) --set spec.storage=$(RUNS)
	$(PY) -m tests.learning.judge $(RUNS)/mnist-dcgan

# The test tiers (docs/development.md, "Test tiers"; times measured there):
#   test-fast   no Ray, no servers: specs, nets, the exact step tests on 2 gloo ranks, ...
#   test        test-fast + everything that starts Ray, MLflow, S3, the API server or a browser
#   test-heavy  real fault injection, a Ray cluster of its own, streaming kill/resume, the
#               tracking outage, the learning cases that train to digits, the step mutants
#   test-gpu    the learning cases that need more than 2 CPUs afford (skipped without CUDA)
#   e2e         a real one-node Kubernetes cluster (below)
# The API server is built before pytest starts, so that no test's time limit includes it.
test: $(STAMP) $(BROWSER)
	assets="$$(bash $(ENVTEST))" && KUBEBUILDER_ASSETS="$$(echo "$$assets" | tail -n 1)" $(PY) -m pytest -m "not heavy and not gpu"

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not heavy and not gpu" -q -p no:cacheprovider

test-heavy: $(STAMP)
	$(PY) -m pytest -m heavy -p no:cacheprovider

# The heavy tier's learning cases alone, each judged beside its plain reference run (which the
# heavy tier trains only when ganops' run fails): the figures in docs/development.md.
test-learning: $(STAMP)
	GANOPS_LEARNING_REFERENCES=1 $(PY) -m pytest tests/test_learning.py -m heavy -s -p no:cacheprovider

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -s -p no:cacheprovider

# Style and structure: ruff's checks and formatter, then the layer contracts in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check ganops tests bench
	$(VENV)/bin/ruff format --check ganops tests bench
	$(VENV)/bin/lint-imports

# End to end on a real one-node Kubernetes cluster on this machine (cluster/local/up.sh; as
# root): the GANJob tests on a cluster of their own, then the cluster alone (up, a ganops pod
# reaches S3 and MLflow, down, and the host is as before). Builds the Kubernetes binaries and
# the ganops image once (cached in ~/.cache); see docs/development.md, "CI", for the times.
e2e: $(STAMP)
	GANOPS_E2E=1 $(PY) -m pytest -p no:cacheprovider -s tests/e2e

# The spec reference (docs/spec-reference.md), generated from the models' field docstrings;
# tests/test_docs.py fails when it is stale.
docs: $(STAMP)
	$(PY) -m ganops.spec.reference

# The main job's step as configured against the plain float32 loop (ratio; target >= 0.95).
bench: $(STAMP)
	$(PY) bench/train_throughput.py

# The same, fewer rounds: CI prints it on every run (≈ 40 s), a measurement, not a gate.
bench-ci: $(STAMP)
	$(PY) bench/train_throughput.py --rounds 4

clean:
	rm -rf $(VENV) .pytest_cache
