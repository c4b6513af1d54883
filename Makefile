# Set-up and the two commands of the README. Runs as root or with sudo for the apt step.
PY ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Debian packages the project uses, each installed only when its file is missing: Fashion-MNIST (tests, demo),
# Graphviz's dot (cell pictures) and Chromium (the test that opens a report in a headless browser)
APT_PACKAGES := $(if $(wildcard $(FASHION_MNIST)),,dataset-fashion-mnist) $(if $(shell command -v dot),,graphviz) \
	$(if $(shell command -v chromium),,chromium)

.PHONY: install system-packages demo test test-slow bench

# torch first, pinned: the CPU build on these machines (a bare "torch" requirement pulls a CUDA build); triton
# pinned to one whose interpreter (the tests of dnas.kernels on the CPU) runs with this numpy
install:
	$(PY) -m pip install -q torch==2.13.0 triton==3.8.0
	$(PY) -m pip install -q -e ".[test]"

system-packages:
	@$(if $(strip $(APT_PACKAGES)),$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(APT_PACKAGES),true)

# the main job: a short real search on Fashion-MNIST, printing the genotype
demo: install system-packages
	dnas search --method darts-v1 --dataset fashion-mnist --epochs 2 --subset 1000 \
		--layers 5 --init-channels 8 --batch-size 32 --runs runs

# the suite but the checks marked slow (real-data searches, the benchmark scripts' runs), which test-slow runs;
# CI (.ci/run) runs both
test: install system-packages
	$(PY) -m pytest -m "not slow"

test-slow: install system-packages
	$(PY) -m pytest -m slow

bench: install
	$(PY) benchmarks/search_step.py
