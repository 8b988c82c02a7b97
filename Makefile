# The two commands of the README: `make test` and `make demo`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PYGAME_HIDE_SUPPORT_PROMPT := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install test test-slow demo bench bench-gpu proto clean

install: $(STAMP)

# torch and torchvision first (docs/notes.md): then pip never backtracks over them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# One process: under two xdist workers (`-n 2 --dist loadfile`, 12m45s) the ray job submit test and the
# hostile-probes test failed on load; tests/conftest.py already shares its fixtures across xdist workers.
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/worldmodel demo

# gpu.py runs the others on a GPU: bench-gpu.
bench: $(STAMP)
	for b in benchmarks/*.py; do case $$b in */common.py|*/__init__.py|*/gpu.py) continue;; esac; $(BIN)/python $$b || exit 1; done

# Under 5 minutes on one GPU: writes runs/bench-gpu.md (`benchmarks/gpu.py --device cpu --quick` smoke-tests it on a CPU).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --device cuda

proto: $(STAMP)
	$(BIN)/python -m worldmodel.proto_gen

clean:
	rm -rf $(VENV) build *.egg-info
