# Entry points for a newcomer: `make demo` (the main job on one forget split of the embedded default, minutes),
# `make sized` (the embedded default itself: every forget split, the resolution its targets need) and `make test`.
# Each creates its own virtualenv in .venv (Python 3.11 preferred: the pinned CPU torch wheel is for 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/tiny

.PHONY: demo sized test test-fast test-unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

test-fast: $(VENV)/.installed  # the quick loop: everything but the end-to-end and multi-process tests
	$(PY) -m pytest -q -m "not slow" tests

test-unit: $(VENV)/.installed  # seconds: the unit tier only
	$(PY) -m pytest -q -m unit tests

demo: $(VENV)/.installed
	$(PY) -m vkd_jax.main --config configs/tiny.py:splits=1 --workdir $(WORKDIR)

sized: $(VENV)/.installed
	$(PY) -m vkd_jax.main --config configs/tiny.py --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) workdir
