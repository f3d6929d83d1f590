# Two commands: `make app` (dashboard on the embedded default) and `make test` (whole suite).
# Both create the local virtualenv .venv from requirements*.txt when it is missing or stale.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-stamp
PORT    ?= 8501
PYTEST_ARGS ?=

.PHONY: setup app test lint bench zoo clean-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

# ARGS go to the app: make app ARGS="--datasets cityscapes:/data/cityscapes gta5:/data/gta5"
ARGS    ?=
app: $(STAMP)
	$(BIN)/python -m streamlit run app/main.py --server.port $(PORT) -- $(ARGS)

# Lint first (ruff; the import-linter layer contract runs inside the suite, tests/test_architecture.py).
lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects no test: that is a broken suite here, reported as such.
test: $(STAMP) lint
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken"; exit 1; fi; exit $$rc

# The demo model zoo in assets/zoo (npdg/recipes/zoo.py): resumable model by model, so it can be spread
# over several sittings; `make zoo DEVICE=cuda` on a GPU.
DEVICE ?= auto
zoo: $(STAMP)
	$(BIN)/python -m npdg zoo build --device $(DEVICE)

bench: $(STAMP)
	$(BIN)/python bench/bench_synthetic.py

clean-venv:
	rm -rf $(VENV)
