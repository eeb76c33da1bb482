# hoofhearted: `make run` starts the exporter, `make test` installs what the tests need and runs them.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# systemd: systemd-analyze verifies the unit; pipx: the install test
DEBS    = prometheus prometheus-alertmanager prometheus-node-exporter prometheus-process-exporter systemd pipx
TOOLS   = prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter prometheus-process-exporter \
          systemd-analyze pipx

.PHONY: run test venv deps bench soak fuzz check clean

venv: $(VENV)/.installed

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
		echo "installing python3-venv"; $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-venv python3-pip && \
		$(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip

# What running needs: the package as a user installs it (not editable: no notes from setuptools
# about editable installs), its dependencies, no test tools. Reinstalled when a package file changes.
PKG_FILES = pyproject.toml $(wildcard exporter/*.py exporter/*/*.py exporter/data/*)

$(VENV)/.runtime: $(PKG_FILES) | $(VENV)/bin/python
	$(VENV)/bin/pip install -q .
	touch $@

# Everything the tests need too (pyproject's [test] extra).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

# Debian's Prometheus stack: promtool and amtool for rule checks, real servers for end-to-end tests,
# node_exporter and process-exporter as reference points; systemd-analyze and pipx for the deploy tests.
deps:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y -q \
			--no-install-recommends $(DEBS); \
	fi; \
	missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "still missing:$$missing"; \
		case "$$CI" in 1|true|yes) exit 1;; esac; \
	fi

run: $(VENV)/.runtime
	$(VENV)/bin/hoofhearted $(ARGS)

test: venv deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: venv deps
	$(PY) -m bench $(ARGS)

soak: venv
	$(PY) -m bench.soak $(ARGS)

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
