#!/usr/bin/env bash
# Run `ansible-test sanity` on a copy of this collection.
#
# ansible-test insists on running from <dir>/ansible_collections/<ns>/<name>,
# and this repository root *is* the collection root, so the tracked and
# untracked-but-not-ignored files (git ls-files -co --exclude-standard) are
# copied into <tmp>/ansible_collections/durable/mover and tested there.
#
# ansible-test bootstraps pip in each sanity venv with a get-pip script that it
# downloads from a host this machine cannot reach. We seed its cache,
# ~/.ansible/test/cache/get_pip_<X_Y>.py, with a stand-in that runs
# `python -m ensurepip` and then `python -m pip install pip==<X.Y>` from the
# package index, which gives the same result.
#
# Usage: tests/sanity/run.sh [extra ansible-test sanity args...]
#   e.g. tests/sanity/run.sh --test pylint plugins/modules/move.py
# Env:
#   ANSIBLE_TEST     ansible-test to run (default: first on PATH, else
#                    .venv/bin/ansible-test; `make sanity` puts .venv/bin first)
#   SANITY_PYTHON    --python version (default 3.11)
#   SANITY_KEEP_TMP  1 = keep the temp copy and print its path
#   SANITY_EXTRA_FILES  extra "src:dest" pairs (space separated) copied into the
#                    temp collection, dest relative to it; used to prove the
#                    pipeline on a throwaway module without touching the repo.
#
# Results (junit xml, ansible-test's bot/ output) are copied back to
# tests/output/sanity/.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

ansible_test=${ANSIBLE_TEST:-$(command -v ansible-test || true)}
if [[ -z "$ansible_test" && -x .venv/bin/ansible-test ]]; then
    ansible_test=$repo_root/.venv/bin/ansible-test
fi
if [[ -z "$ansible_test" ]]; then
    echo "run.sh: ansible-test not found; run 'make venv' (or 'make sanity')" >&2
    exit 2
fi
# The python that runs ansible-test: the venv's, beside it.
at_python=$(dirname "$ansible_test")/python
[[ -x "$at_python" ]] || at_python=python3
python_version=${SANITY_PYTHON:-3.11}

namespace=$(sed -n 's/^namespace: *//p' galaxy.yml)
name=$(sed -n 's/^name: *//p' galaxy.yml)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/durable-mover-sanity.XXXXXX")
# Inline rather than a function: shellcheck 0.9 flags trap-only functions
# as unreachable (SC2317).
trap 'if [[ "${SANITY_KEEP_TMP:-0}" == 1 ]]; then echo "run.sh: kept $tmp"; else rm -rf "$tmp"; fi' EXIT
coll="$tmp/ansible_collections/$namespace/$name"
mkdir -p "$coll"

# --- copy the collection -----------------------------------------------------
# Deleted-but-tracked files are listed by ls-files too; skip what no longer
# exists. Local tooling dirs and test output are never copied.
git ls-files -z -co --exclude-standard \
  | grep -zvE '^(\.venv|\.collections|\.ansible|tests/output|demo|migrate-reports)/' \
  | while IFS= read -r -d '' f; do
        if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
    done \
  | tar -cf - --null --no-recursion -T - \
  | tar -xf - -C "$coll"

for pair in ${SANITY_EXTRA_FILES:-}; do
    src=${pair%%:*}
    dest=${pair#*:}
    mkdir -p "$(dirname "$coll/$dest")"
    cp -a "$src" "$coll/$dest"
    echo "run.sh: added throwaway file $dest"
done

# ansible-test lists a collection's files with git when it is a git repo and
# by walking the tree otherwise; a fresh repo keeps that listing identical to
# what was copied and is what CI clones look like.
git -C "$coll" init -q
git -C "$coll" add -A
echo "run.sh: copied $(git -C "$coll" ls-files | wc -l) files to $coll"

# --- seed the get-pip cache ---------------------------------------------------
pip_version=$("$at_python" - <<'EOF'
import re
import types

try:
    from ansible_test._internal.python_requirements import get_venv_packages
    print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])
except Exception:  # layout changed: fall back to reading the source
    import ansible_test._internal.python_requirements as mod
    with open(mod.__file__, encoding="utf-8") as handle:
        print(re.search(r"pip='([^']+)'", handle.read()).group(1))
EOF
)
cache_dir="$HOME/.ansible/test/cache"
get_pip="$cache_dir/get_pip_${pip_version//./_}.py"
mkdir -p "$cache_dir"
# ansible-test runs this as `python get_pip_X_Y.py --disable-pip-version-check
# pip==X.Y [other pkgs] [--no-setuptools] [--no-wheel]` inside a new venv
# created --without-pip; the real get-pip.py takes the same arguments.
cat > "$get_pip.tmp" <<'EOF'
"""Stand-in for get-pip.py, written by durable.mover tests/sanity/run.sh."""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel", "--no-pip"}

args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])
# ensurepip also brings setuptools on Python < 3.12; get-pip.py would not.
wanted = " ".join(args).lower()
if "--no-setuptools" in sys.argv and "setuptools" not in wanted:
    subprocess.call([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"])
EOF
if ! cmp -s "$get_pip.tmp" "$get_pip"; then
    mv "$get_pip.tmp" "$get_pip"
    echo "run.sh: seeded $get_pip"
else
    rm -f "$get_pip.tmp"
fi

# --- run ----------------------------------------------------------------------
# ansible-test sets up its own collection search path; an inherited one could
# make it load the working tree instead of the copy.
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS

cd "$coll"
rc=0
start=$SECONDS
"$ansible_test" sanity --local --requirements --python "$python_version" \
    --color no --junit "$@" || rc=$?
echo "run.sh: ansible-test sanity exited $rc after $((SECONDS - start)) s"

if [[ -d "$coll/tests/output" ]]; then
    rm -rf "$repo_root/tests/output/sanity"
    mkdir -p "$repo_root/tests/output/sanity"
    cp -a "$coll/tests/output/." "$repo_root/tests/output/sanity/"
fi
exit "$rc"
