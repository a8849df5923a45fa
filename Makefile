# One entry point for people and CI. Every target sets up what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-deps run test test-faults test-containers lint format bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly: anything else resolving torch on its own could pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'wrong torch ' + v)"
	touch $(STAMP)

# ffmpeg decodes audio; chromium runs the web page tests; prometheus provides promtool for the
# alert rule tests; curl and jq run the documentation's own commands in the tests; hyperfine
# times the command line's start-up (bench/bench_cli_startup.py) and wrk the HTTP edge
# (bench/bench_edge.py); redis-server gives the fault and compose tests private Redis servers.
# podman (with runc: crun fails on hybrid cgroups), and debootstrap (the test base image): the
# container tests (tests/test_containers.py, docs/deploy.md).
SYSTEM_TOOLS := ffmpeg:ffmpeg ffprobe:ffmpeg chromium:chromium promtool:prometheus curl:curl jq:jq \
	hyperfine:hyperfine wrk:wrk redis-server:redis-server podman:podman runc:runc \
	debootstrap:debootstrap

system-deps:
	@missing=$$(for pair in $(SYSTEM_TOOLS); do \
		command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done | sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing(apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

setup: system-deps $(STAMP)

run: setup
	$(VENV)/bin/stemify serve

# Line coverage of src/stemify, the stemify processes the tests start included (the
# [tool.coverage.*] sections of pyproject.toml); fails under their fail_under.
test: setup
	$(PY) -m pytest --cov --cov-report=term

# The container tests alone: the image built with podman from the Dockerfile on a debootstrap
# base (both cached between runs), run as API and worker containers and as the compose stack.
# `make test` runs them too. podman's settings for these machines: tests/containers/containers.conf.
export CONTAINERS_CONF := $(CURDIR)/tests/containers/containers.conf
test-containers: setup
	$(PY) -m pytest -m containers

# The reliability suite alone (docs/reliability.md): databases stopped, Redis killed, disks
# filled, workers OOM-killed. Needs root (cgroups, mounts) and PostgreSQL's binaries.
test-faults: setup
	$(PY) -m pytest -m faults

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/hadolint $(wildcard Dockerfile*)

format: setup
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

bench: setup
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_service.py
	$(PY) bench/bench_cli_startup.py
	$(PY) bench/bench_edge.py --health
	$(PY) bench/bench_links.py
	$(PY) bench/bench_storage.py
	$(PY) bench/bench_mix.py
	$(PY) bench/bench_autoscale.py
	$(PY) bench/bench_image.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
