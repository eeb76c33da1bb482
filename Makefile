# hoofhearted: `make run` starts the exporter, `make test` installs what the tests need and runs them.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS    = prometheus prometheus-alertmanager prometheus-node-exporter prometheus-process-exporter
TOOLS   = prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter prometheus-process-exporter

.PHONY: run test venv deps bench soak fuzz check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
		echo "installing python3-venv"; $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-venv python3-pip && \
		$(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# Debian's Prometheus stack: promtool and amtool for rule checks, real servers for end-to-end tests,
# node_exporter and process-exporter as reference points.
deps:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(DEBS); \
	fi

run: venv
	$(VENV)/bin/hoofhearted $(ARGS)

test: venv deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: venv deps
	$(PY) -m bench $(ARGS)
	$(PY) -m bench.attribution

soak: venv
	$(PY) -m bench.soak $(ARGS)

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
