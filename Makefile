# Two commands do everything (DESIGN §2): `make demo` runs the main job, `make test` the test suite.
# Each creates the environment in .venv on first use and reuses it afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# A constraints file keeps torch pinned in every pip call, including pip's isolated build environments.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test demo lint clean-venv

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, monai, ignite; print('torch', torch.__version__, '| monai', monai.__version__, '| ignite', ignite.__version__)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m monai_protoshare.workflows.demo $(DEMO_ARGS)

lint: venv
	$(PY) -m ruff check monai_protoshare data_prep tests benchmarks
	$(PY) -m ruff format --check monai_protoshare data_prep tests benchmarks

clean-venv:
	rm -rf $(VENV)
