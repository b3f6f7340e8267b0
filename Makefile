# The two commands a newcomer needs: `make train` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast test-all lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: any other torch would pull gigabytes of CUDA packages.
	$(PIP) install -q torch==2.13.0 "setuptools>=68" wheel
	# DeepSpeed's build imports torch, hence --no-build-isolation; constraints keep torch at 2.13.0.
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m launcher.train $(ARGS)

# The whole default suite (what CI runs), with the 25 slowest tests listed at the end.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=25 $(ARGS)

# For edit-test loops: leaves out the multi-process (gloo) tests and the real-Slurm tests; not what CI runs.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed and not slurm" --durations=10 $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) outputs .cache
