# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_hashing.py.

Whether blake3 is importable is decided at import of the core, so the
"blake3 missing" branch runs in child interpreters that really cannot import
it: the system python3 (no blake3 installed) when it has none, and this
interpreter with the import blocked (sys.modules['blake3'] = None, which
makes ``import blake3`` raise ImportError).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from core_helpers import run_python

from ansible_collections.durable.mover.plugins.module_utils import _hashing

HAVE_BLAKE3 = importlib.util.find_spec("blake3") is not None
DATA = os.urandom(3 * 1024 * 1024 + 12345)

PROBE = """
import json, sys
%s
from ansible_collections.durable.mover.plugins.module_utils import _hashing
out = {"available": _hashing.blake3_available(), "auto": _hashing.resolve("auto"),
       "sha256": _hashing.resolve("sha256")}
try:
    _hashing.resolve("blake3")
    out["blake3"] = "resolved"
except _hashing.MissingLibraryError as exc:
    out["blake3"] = "missing"
    out["library"] = exc.library
    out["traceback"] = exc.traceback
print(json.dumps(out))
"""


def probe(python=None, block_blake3=False):
    code = PROBE % ("sys.modules['blake3'] = None" if block_blake3 else "")
    proc = run_python(code, python=python)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_auto_picks_blake3_iff_importable():
    assert _hashing.blake3_available() is HAVE_BLAKE3
    assert _hashing.resolve("auto") == ("blake3" if HAVE_BLAKE3 else "sha256")


@pytest.mark.skipif(not HAVE_BLAKE3, reason="blake3 is not installed in the test interpreter")
def test_blake3_resolves_when_installed():
    assert _hashing.resolve("blake3") == "blake3"
    assert probe()["blake3"] == "resolved"


def test_blake3_blocked_in_child_falls_back_and_refuses_explicit():
    out = probe(block_blake3=True)
    assert out == {"available": False, "auto": "sha256", "sha256": "sha256", "blake3": "missing",
                   "library": "blake3", "traceback": out["traceback"]}
    assert "ImportError" in out["traceback"] or "ModuleNotFoundError" in out["traceback"]


def _system_python():
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate or not os.path.exists(candidate):
            continue
        has = subprocess.run([candidate, "-c", "import blake3"], capture_output=True, check=False)
        if has.returncode != 0:
            return candidate
    return None


def test_system_python_without_blake3():
    python = _system_python()
    if python is None:
        pytest.skip("no python3 without blake3 found (/usr/bin/python3, PATH)")
    out = probe(python=python)
    assert (out["available"], out["auto"], out["blake3"], out["library"]) == (False, "sha256", "missing", "blake3")
    assert "blake3" in out["traceback"]


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="md5"):
        _hashing.resolve("md5")
    with pytest.raises(ValueError):
        _hashing.new("md5")


def feed_in_chunks(hasher, data, sizes=(1, 7, 4096, 65536, 1 << 20)):
    pos, i = 0, 0
    view = memoryview(data)
    while pos < len(data):
        step = sizes[i % len(sizes)]
        hasher.update(view[pos:pos + step])
        pos += step
        i += 1
    return hasher


def test_sha256_digest_matches_hashlib():
    hasher = feed_in_chunks(_hashing.new("sha256"), DATA)
    assert _hashing.digest("sha256", hasher) == "sha256:" + hashlib.sha256(DATA).hexdigest()
    empty = _hashing.new("sha256")
    assert _hashing.digest("sha256", empty) == "sha256:" + hashlib.sha256(b"").hexdigest()


@pytest.mark.skipif(not HAVE_BLAKE3, reason="blake3 is not installed in the test interpreter")
def test_blake3_digest_matches_reference():
    import blake3  # pylint: disable=import-outside-toplevel

    hasher = feed_in_chunks(_hashing.new("blake3"), DATA)
    assert _hashing.digest("blake3", hasher) == "blake3:" + blake3.blake3(DATA).hexdigest()
    # one big update (hashed on several threads when the library can) gives the same
    whole = _hashing.new("blake3")
    whole.update(DATA)
    assert whole.hexdigest() == blake3.blake3(DATA).hexdigest()
    # and it is not SHA-256 under another name
    assert whole.hexdigest() != hashlib.sha256(DATA).hexdigest()


def test_size_only_counts_bytes():
    hasher = feed_in_chunks(_hashing.new("none"), DATA)
    assert isinstance(hasher, _hashing.SizeOnly)
    assert _hashing.digest("none", hasher) == "size:%d" % len(DATA)
    assert _hashing.digest("none", _hashing.SizeOnly()) == "size:0"
    other = _hashing.new("none")
    other.update(bytearray(5))
    other.update(memoryview(b"abc"))
    assert other.hexdigest() == "size:8"


def test_digests_differ_for_different_content():
    for name in ("sha256",) + (("blake3",) if HAVE_BLAKE3 else ()):
        a, b = _hashing.new(name), _hashing.new(name)
        a.update(DATA)
        b.update(DATA[:-1] + bytes([DATA[-1] ^ 1]))
        assert _hashing.digest(name, a) != _hashing.digest(name, b)
