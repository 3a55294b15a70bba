# Every target sets up the virtual environment on first use (and again when the
# dependencies change), so a fresh clone needs no separate set-up step.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MNIST  ?= ../shared/datasets/mnist
EPOCHS ?= 10
# etcd + kube-apiserver for the operator tests: built once (≈5 min), then cached.
ENVTEST ?= ../shared/k8s-envtest/build.sh

.PHONY: setup mnist test test-learning bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt holds torch at the CPU wheel; unpinned, pip pulls GBs of CUDA.
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job, sized for a 2-core CPU with no internet: the local MNIST test split, 3 epochs.
mnist: $(STAMP)
	$(VENV)/bin/ganops submit jobs/mnist_dcgan.yaml \
	  --set spec.data.root=$(MNIST) --set spec.data.split=test --set spec.train.epochs=$(EPOCHS)

# The API server is built before pytest starts, so that no test's time limit includes it.
test: $(STAMP)
	assets="$$(bash $(ENVTEST))" && KUBEBUILDER_ASSETS="$$(echo "$$assets" | tail -n 1)" $(PY) -m pytest

# Every case of the learning tier (25-35 min on 2 CPUs); make test runs its default subset.
test-learning: $(STAMP)
	GANOPS_LEARNING=full $(PY) -m pytest tests/test_learning.py -s

bench: $(STAMP)
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
