# One-command setup from nothing: `make test` / `make demo` install everything into .venv/
# (pinned ROS 2 Jazzy wheels, torch, this package, the generated messages) on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH_VERSION ?= 2.13.0
ROS_PINS := -c requirements/ros-jazzy-constraints.txt
PY_PINS  := -c requirements/python-constraints.txt

.PHONY: setup test demo clean distclean

setup: $(VENV)/.system $(VENV)/.ros $(VENV)/.torch $(VENV)/.package specprune_ros/msg/__init__.py

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "ROS 2 Jazzy wheels exist for CPython 3.10-3.12; found %d.%d (set PYTHON=...)" % v)'
	$(PYTHON) -m venv $(VENV)

# MuJoCo (the simulated task) renders headless through EGL: Mesa's EGL from Debian, if missing.
$(VENV)/.system: $(VENV)/bin/python
	@if ! ldconfig -p | grep -q 'libEGL_mesa.so'; then \
	  echo "installing Mesa EGL (libegl1 libegl-mesa0 libgl1-mesa-dri) for headless MuJoCo rendering"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    libegl1 libegl-mesa0 libgl1-mesa-dri; \
	fi
	@touch $@

$(VENV)/.ros: $(VENV)/bin/python requirements/ros.txt requirements/ros-jazzy-constraints.txt
	$(PIP) install $(ROS_PINS) -r requirements/ros.txt
	@touch $@

# The CPU build of torch where there is no NVIDIA driver: never the multi-GB CUDA stack.
$(VENV)/.torch: $(VENV)/bin/python
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "GPU found: installing torch==$(TORCH_VERSION) (CUDA build)"; \
	  $(PIP) install $(PY_PINS) "torch==$(TORCH_VERSION)"; \
	else \
	  echo "no GPU: installing torch==$(TORCH_VERSION)+cpu"; \
	  $(PIP) install $(PY_PINS) "torch==$(TORCH_VERSION)+cpu" \
	  || $(PIP) install $(PY_PINS) --index-url https://download.pytorch.org/whl/cpu "torch==$(TORCH_VERSION)+cpu"; \
	fi
	@touch $@

$(VENV)/.package: $(VENV)/.torch setup.py setup.cfg requirements/python-constraints.txt
	$(PIP) install $(PY_PINS) -e ".[test]"
	@touch $@

specprune_ros/msg/__init__.py: $(VENV)/.ros $(wildcard msg/*.msg scripts/*) CMakeLists.txt package.xml tools/build_messages.sh
	tools/build_messages.sh $(VENV)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest test -q

demo: setup
	$(VENV)/bin/specprune demo

clean:
	rm -rf build specprune_ros/msg specprune_ros/*.so .pytest_cache

distclean: clean
	rm -rf $(VENV)
