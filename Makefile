# drkit — the commands a newcomer needs (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test test-fast lint golden demo serve screenshots stop clean

install: $(VENV)/.installed
	@scripts/install-system.sh
	@scripts/install-azurite.sh
	@scripts/install-browser.sh

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e . --config-settings editable_mode=compat  # a plain .pth path: no import finder run by site at every start
	@touch $@

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# ruff includes the S (bandit) security rules (pyproject.toml says why each exception is one);
# pip-audit checks requirements.lock against PyPI's vulnerability data (AUDIT_STRICT=1: fail if unreachable).
lint: install
	$(BIN)/ruff check cli drkit tasks flows deployments tests bench scripts
	$(BIN)/mypy cli drkit tasks flows deployments
	$(BIN)/python scripts/audit_deps.py requirements.lock

golden: install
	rm -rf var/golden-sent/sqlserver
	-$(BIN)/python -m pytest -q tests/unit/test_sqlserver_golden.py
	$(BIN)/python scripts/accept_goldens.py

demo: install
	$(BIN)/drkit demo

serve: install
	scripts/serve.sh

# The README's Prefect UI screenshots (docs/img/ui-*.png), taken by the browser test of a restore run from the UI.
screenshots: install
	DRKIT_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser/test_ui_restore.py

clean:
	rm -rf var/demo

# The demo's Prefect server (var/demo/prefect), and the one flow commands start beside the policy file
# (var/prefect-local) when PREFECT_API_URL is not set.
stop:
	@for d in var/demo/prefect var/prefect-local; do \
	  if [ -f $$d/server.pid ]; then kill -TERM -$$(cat $$d/server.pid) 2>/dev/null || true; \
	    rm -f $$d/server.pid $$d/server.url; echo "stopped the Prefect server of $$d"; fi; done
