# Developer and CI entry points for the durable.mover collection.
#
#   make venv             .venv with requirements-dev.txt (stamp: .venv/.stamp)
#   make collection-link  .collections/ansible_collections/durable/mover -> repo root
#   make demo             build ./demo/src and run playbooks/migrate.yml on localhost
#   make test             pytest (its groups and the version matrix at once), then sanity, then lint;
#                         all three always run
#   make pytest | sanity | lint
#   make crash-full       every crash state of the block-level sweeps (hours)
#   make matrix           the version-matrix tests under each ansible-core of MATRIX_CORES
#   make clean
#
# Everything runs from the repository root; `make -C /path/to/repo test` works too.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
COLL_ROOT := .collections
COLL_LINK := $(COLL_ROOT)/ansible_collections/durable/mover
OUTPUT := tests/output
PYTEST_ARGS ?=

# pip on some machines lists local index directories that do not exist; the
# resulting per-package warnings are noise, not errors.
PIP_NOISE := sed -u '/is ignored: it is neither a file nor a directory/d'

# The venv's tools (ansible-*, pytest) come first for every recipe and for the
# tests' subprocesses; the venv itself is made with the PATH make started with.
SYSTEM_PATH := $(PATH)
export PATH := $(CURDIR)/$(VENV_BIN):$(SYSTEM_PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLL_ROOT):$(HOME)/.ansible/collections:/usr/share/ansible/collections

.PHONY: help venv collection-link demo test pytest pytest-all sanity lint clean bench bench-quick bench-core bench-ansible crash-full

help:
	@sed -n '3,10s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

# Re-run when requirements change; `python3 -m venv` over an existing venv is
# harmless, and pip only installs what is missing.
$(STAMP): requirements-dev.txt
	@echo ">>> creating $(VENV) with $$(PATH="$(SYSTEM_PATH)" command -v $(PYTHON)) ($$(PATH="$(SYSTEM_PATH)" $(PYTHON) --version 2>&1))"
	PATH="$(SYSTEM_PATH)" $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | $(PIP_NOISE)
	$(VENV_BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 | $(PIP_NOISE)
	@$(VENV_BIN)/python -m pip list --disable-pip-version-check 2>/dev/null \
	  | grep -iE '^(ansible-core|ansible-lint|blake3|pytest|pytest-timeout) ' || true
	touch $@

# Relative link (../../.. from .collections/ansible_collections/durable/), so
# the clone can be moved. Recreated if missing or pointing elsewhere.
collection-link:
	@if [ "$$(readlink $(COLL_LINK) 2>/dev/null)" != "../../.." ]; then \
	  mkdir -p $(dir $(COLL_LINK)) && ln -sfn ../../.. $(COLL_LINK) && \
	  echo ">>> linked $(COLL_LINK) -> ../../.."; \
	fi

demo: venv collection-link
	rm -rf demo
	$(VENV_BIN)/python tests/demo/make_demo_tree.py demo/src
	$(VENV_BIN)/ansible-playbook playbooks/migrate.yml \
	  -e migrate_src=$(CURDIR)/demo/src \
	  -e migrate_dest=$(CURDIR)/demo/dest \
	  -e migrate_state_dir=$(CURDIR)/demo/state
	@if [ -f migrate-reports/summary.md ]; then \
	  echo "=== migrate-reports/summary.md"; cat migrate-reports/summary.md; \
	elif [ -f migrate-reports/fleet.json ]; then \
	  echo "=== migrate-reports/fleet.json"; cat migrate-reports/fleet.json; \
	else \
	  echo "(no migrate-reports/summary.md or fleet.json was written)"; \
	fi

# All three parts run even when an earlier one fails; the target fails if any did.
# The pytest part runs the groups of tests/tools/run_groups.py at once, and
# the tests marked `matrix` under each ansible-core of MATRIX_CORES beside them.
test: venv collection-link matrix-venvs
	@rc=0; summary=""; \
	for part in pytest-all sanity lint; do \
	  start=$$SECONDS; \
	  if $(MAKE) --no-print-directory $$part; then result=ok; else result=FAILED; rc=1; fi; \
	  summary+="$$(printf '  %-10s %-7s %4ds' $$part $$result $$((SECONDS - start)))"$$'\n'; \
	done; \
	printf '>>> make test:\n%s' "$$summary"; \
	exit $$rc

# Groups of tests side by side (crash, ansible, core; see run_groups.py),
# each with its own basetemp, log and JUnit file, merged in tests/output/.
# PYTEST_ARGS go to every group; PYTEST_GROUPS=crash,core runs some.
PYTEST_GROUPS ?= crash,ansible,core
comma := ,
MATRIX_VERSIONS = $(subst $(eval) ,$(comma),$(foreach spec,$(MATRIX_CORES),$(firstword $(subst :, ,$(spec)))))
pytest: venv collection-link
	$(VENV_BIN)/python tests/tools/run_groups.py --only $(PYTEST_GROUPS) -- $(PYTEST_ARGS)

pytest-all: venv collection-link matrix-venvs
	$(VENV_BIN)/python tests/tools/run_groups.py --only $(PYTEST_GROUPS) --matrix '$(MATRIX_VERSIONS)' -- $(PYTEST_ARGS)

sanity: venv
	tests/sanity/run.sh

lint: venv collection-link
	ansible-lint

# The ansible-core version matrix: one venv per version under .matrix/, each
# with a controller Python that version supports, found under ~/.pyenv/versions
# (newest patch release of that minor) or as pythonX.Y on PATH. `make matrix`
# runs the tests marked `matrix` under every version of MATRIX_CORES (and
# fails, never skips, when one cannot be set up). Each word: core:python.
MATRIX_CORES ?= 2.16:3.10 2.20:3.13
MATRIX_DIR := .matrix
.PHONY: matrix matrix-venvs
matrix-venvs:
	@for spec in $(MATRIX_CORES); do \
	  core=$${spec%%:*}; py=$${spec##*:}; dir=$(MATRIX_DIR)/ansible-core-$$core; \
	  interp=$$(ls -d $$HOME/.pyenv/versions/$$py.* 2>/dev/null | sort -V | tail -1); \
	  interp=$${interp:+$$interp/bin/python}; interp=$${interp:-$$(PATH="$(SYSTEM_PATH)" command -v python$$py || true)}; \
	  if [ ! -x "$$dir/bin/ansible-playbook" ]; then \
	    if [ -z "$$interp" ]; then echo ">>> matrix: ansible-core $$core: no Python $$py found (pyenv or PATH)" >&2; exit 1; fi; \
	    echo ">>> matrix: ansible-core $$core with $$interp"; \
	    "$$interp" -m venv $$dir && $$dir/bin/python -m pip install --quiet --disable-pip-version-check "ansible-core==$$core.*" 2>&1 | $(PIP_NOISE); \
	  fi; \
	  echo ">>> matrix: $$($$dir/bin/ansible-playbook --version | sed -n 1p) ($$($$dir/bin/python --version)) in $$dir"; \
	done

# One pytest per version, all at once (each play keeps about one core busy),
# each with its own basetemp, log and JUnit file; the target fails if any did.
matrix: venv collection-link matrix-venvs
	@mkdir -p $(OUTPUT)/junit
	@pids=""; for spec in $(MATRIX_CORES); do \
	  core=$${spec%%:*}; \
	  echo ">>> matrix: pytest -m matrix under ansible-core $$core (log: $(OUTPUT)/matrix-$$core.log)"; \
	  DURABLE_MOVER_CORE_MATRIX=$$core $(VENV_BIN)/python -m pytest -ra -m matrix -p no:cacheprovider \
	    --basetemp=$(CURDIR)/$(OUTPUT)/matrix-$$core-tmp --junitxml=$(OUTPUT)/junit/matrix-$$core.xml \
	    $(PYTEST_ARGS) tests/ > $(OUTPUT)/matrix-$$core.log 2>&1 & pids="$$pids $$!:$$core"; \
	done; rc=0; for entry in $$pids; do \
	  if wait $${entry%%:*}; then result=ok; else result=FAILED; rc=1; fi; \
	  echo ">>> matrix: ansible-core $${entry##*:}: $$result: $$(tail -1 $(OUTPUT)/matrix-$${entry##*:}.log)"; \
	done; exit $$rc

clean:
	rm -rf $(VENV) $(MATRIX_DIR) $(COLL_ROOT) .ansible $(OUTPUT) demo .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +

# The block-level power-cut sweeps (tests/crash/test_block_sweeps.py, root)
# with every crash state of each swept run checked and recovered, not CI's
# seeded sample; BLOCKSWEEP_SEED=N picks other subsets, BLOCKSWEEP_REPORT=FILE
# collects each sweep's numbers as JSON lines.
crash-full: venv collection-link
	BLOCKSWEEP_FULL=1 $(VENV_BIN)/python -m pytest -ra -s $(PYTEST_ARGS) tests/crash/test_block_sweeps.py

# Benchmarks (root: loop filesystems, drop_caches); results: benchmarks/RESULTS.md.
# bench: real trees (the Linux kernel source from Debian's linux-source package,
# unpacked once into /var/cache/durable-mover-bench; a mixed tree; 20,000 x 4 KiB;
# one 2 GiB file) through ansible-playbook and the core against cp -a + sync + rm
# and rsync -aHAX + sync, quiet and under a dd load, then Ansible's share (one
# file, the rerun of a finished 200,000-file job): about 30 minutes. bench-quick:
# smaller trees, no kernel, a few minutes. bench-core: the core alone against mv,
# cp and rsync (physical limits, scale). BENCH_ARGS="--only kernel --runs 3" to narrow.
BENCH_ARGS ?=
bench: venv collection-link
	$(VENV_BIN)/python benchmarks/real_trees.py --output benchmarks/last-run.md $(BENCH_ARGS)

bench-quick: venv collection-link
	$(VENV_BIN)/python benchmarks/real_trees.py --quick --output benchmarks/last-quick-run.md $(BENCH_ARGS)

bench-core: venv collection-link
	$(VENV_BIN)/python benchmarks/bench.py --output benchmarks/last-core-run.md $(BENCH_ARGS)

# Ansible's share: ansible-playbook playbooks/migrate.yml against the core alone
# (one file, 20,000 files, the rerun of each; root). BENCH_ARGS="--rerun-files
# 200000" adds the rerun of a large finished job, "--quick" a smoke run.
bench-ansible: venv collection-link
	$(VENV_BIN)/python benchmarks/ansible_share.py --output benchmarks/last-ansible-run.md $(BENCH_ARGS)

# Molecule scenario extensions/molecule/default: playbooks/migrate.yml on a
# fleet of SSH hosts that tests/fleet/harness.py builds on this machine (root:
# network namespaces, loop mounts; no Docker). Run from the collection root,
# where molecule looks for extensions/molecule/.
.PHONY: molecule
molecule: venv collection-link
	$(VENV_BIN)/molecule test -s default
