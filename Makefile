# drkit — the commands a newcomer needs (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test test-fast lint demo serve stop clean

install: $(VENV)/.installed
	@scripts/install-system.sh
	@scripts/install-azurite.sh
	@scripts/install-browser.sh

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check drkit tasks flows deployments tests bench
	$(BIN)/mypy drkit tasks flows deployments

demo: install
	$(BIN)/drkit demo

serve: install
	scripts/serve.sh

clean:
	rm -rf var/demo

stop:
	@if [ -f var/demo/prefect-server.pid ]; then kill -TERM -$$(cat var/demo/prefect-server.pid) 2>/dev/null || true; rm -f var/demo/prefect-server.pid; echo "stopped the demo's Prefect server"; fi
