# The two commands a newcomer needs: `make train` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install train test test-all clean

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

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) outputs .cache
