# hoofhearted: `make run` starts the exporter, `make test` installs what the tests need and runs them.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# systemd: systemd-analyze verifies the unit; pipx: the install test; Chromium: the live page
DEBS    = prometheus prometheus-alertmanager prometheus-node-exporter prometheus-process-exporter \
          freeipmi-tools openipmi chromium chromium-driver systemd pipx
TOOLS   = prometheus promtool prometheus-alertmanager amtool prometheus-node-exporter prometheus-process-exporter \
          ipmi-sensors ipmi_sim chromium chromedriver systemd-analyze pipx

# The GPU tests run twice: at the newest nvidia-ml-py (.venv) and at the lowest pyproject allows.
NVML_FLOOR = $(shell sed -n 's/.*"nvidia-ml-py>=\([0-9.]*\)".*/\1/p' pyproject.toml)
FLOOR_VENV ?= .venv-floor

.PHONY: run test test-nvml-floor venv deps bench soak fuzz check clean gpu-check

venv: $(VENV)/.installed

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
		echo "installing python3-venv"; $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends python3-venv python3-pip && \
		$(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip

# What running needs: the package as a user installs it (not editable: no notes from setuptools
# about editable installs), its dependencies, no test tools. Reinstalled when a package file changes.
PKG_FILES = pyproject.toml $(wildcard exporter/*.py exporter/*/*.py exporter/data/* exporter/web/*)

$(VENV)/.runtime: $(PKG_FILES) | $(VENV)/bin/python
	$(VENV)/bin/pip install -q .
	touch $@
	rm -f $(VENV)/.installed    # that replaced the editable install: `make test` puts it back

# Everything the tests need too (pyproject's [test] extra).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

# Debian's Prometheus stack: promtool and amtool for rule checks, real servers for end-to-end tests,
# node_exporter and process-exporter as reference points; Chromium and its driver for the live page;
# systemd-analyze and pipx for the deploy tests; FreeIPMI reads BMCs, OpenIPMI's ipmi_sim simulates one.
deps:
	@missing=""; for t in $(TOOLS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || missing="$$missing $$t"; done; \
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
	$(MAKE) test-nvml-floor

$(FLOOR_VENV)/.installed-$(NVML_FLOOR): pyproject.toml $(VENV)/.installed
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/pip install -q -e '.[test]' 'nvidia-ml-py==$(NVML_FLOOR)'
	touch $@

# the GPU tests against the oldest nvidia-ml-py the package allows
test-nvml-floor: $(FLOOR_VENV)/.installed-$(NVML_FLOOR)
	$(FLOOR_VENV)/bin/python -c 'import importlib.metadata as m; v = m.version("nvidia-ml-py"); \
		assert v == "$(NVML_FLOOR)", v; print("nvidia-ml-py", v)'
	$(FLOOR_VENV)/bin/pytest -q tests/test_gpu_nvidia.py tests/test_gpu_e2e.py tests/test_gpu_fdinfo.py \
		tests/test_gpu_amd.py tests/test_gpu_health.py tests/test_gpu_check.py

# on a machine with NVIDIA GPUs: the exporter beside nvidia-smi, every shared reading compared
gpu-check: venv
	$(PY) -m bench.gpu_check $(ARGS)

bench: venv deps
	$(PY) -m bench $(ARGS)
	$(PY) -m bench.attribution

soak: venv
	$(PY) -m bench.soak $(ARGS)

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .hypothesis build dist *.egg-info
