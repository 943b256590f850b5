# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The crash suite's tools: a fixed tree, the invariant, and runs of the real core.

The invariant, checked after every injected fault:

* every source file's exact content is at the source, or at the destination
  under its final name, or both; never neither;
* no file under its final destination name is corrupt or partial (we are
  stricter than "while the source is gone": the mover never exposes a partial
  file under a final name at all);
* no journal row says done for a file whose destination is not whole.

After a clean rerun: everything at the destination, nothing at the source, no
part files, the journal complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / 'tests' / 'tools' / 'mover_cli.py'
PART = re.compile(r'^\..*\.[0-9a-f]{12}\.part$')

# A small tree with every kind the mover treats differently: a few files, one
# larger than a checkpoint, a symlink, a hard-link pair, a nested dir, an empty
# file and an empty dir.
CHECKPOINT = 64 * 1024
BUFFER = 16 * 1024


def build_tree(root: Path) -> None:
    """Always the same names, contents and creation order (deterministic runs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / 'a.txt').write_bytes(b'alpha\n' * 10)
    (root / 'empty').write_bytes(b'')
    (root / 'd1').mkdir()
    (root / 'd1' / 'b.txt').write_bytes(b'bravo\n' * 100)
    (root / 'd1' / 'd2').mkdir()
    big = bytes((i * 7919 + 13) % 251 for i in range(CHECKPOINT * 3 + 1234))
    (root / 'd1' / 'd2' / 'big.bin').write_bytes(big)
    (root / 'd1' / 'link').symlink_to('b.txt')
    os.link(root / 'a.txt', root / 'd1' / 'hard.txt')
    (root / 'emptydir').mkdir()
    os.utime(root / 'a.txt', ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def snapshot(root: Path) -> dict:
    """rel -> ('file', sha256) | ('symlink', target) | ('dir', None)."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ('symlink', os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ('dir', None)
            elif stat.S_ISREG(st.st_mode):
                result[rel] = ('file', hashlib.sha256(path.read_bytes()).hexdigest())
    return result


def entry(root: Path, rel: str):
    path = root / rel
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return ('symlink', os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ('dir', None)
    if stat.S_ISREG(st.st_mode):
        return ('file', hashlib.sha256(path.read_bytes()).hexdigest())
    return ('other', None)


def journal_rows(state_dir: Path) -> list:
    """(path, state) of every journal row; [] when there is no journal yet."""
    journals = list(state_dir.glob('*/journal.sqlite'))
    if not journals:
        return []
    # Read-write: a journal killed while being created has a hot rollback
    # journal, which SQLite rolls back on open exactly as the next run would.
    conn = sqlite3.connect(str(journals[0]))
    try:
        try:
            return [(os.fsdecode(bytes(p)), s) for p, s in conn.execute('SELECT path, state FROM files')]
        except sqlite3.DatabaseError as exc:
            if 'no such table' in str(exc):
                return []
            raise
    finally:
        conn.close()


def journal_details(state_dir: Path) -> dict:
    """path -> {state, attempts, checkpoint, size} of every file row ({} without a journal)."""
    journals = list(state_dir.glob('*/journal.sqlite'))
    if not journals:
        return {}
    conn = sqlite3.connect(str(journals[0]))
    try:
        return {os.fsdecode(bytes(p)): {'state': s, 'attempts': a, 'checkpoint': c, 'size': z}
                for p, s, a, c, z in conn.execute('SELECT path, state, attempts, checkpoint, size FROM files')}
    except sqlite3.DatabaseError as exc:
        if 'no such table' in str(exc):
            return {}
        raise
    finally:
        conn.close()


def check_invariant(original: dict, src: Path, dest: Path, state_dir: Path) -> list:
    """Violations of the invariant (empty list: all good)."""
    problems = []
    for rel, want in original.items():
        if want[0] == 'dir':
            continue
        at_src = entry(src, rel)
        at_dst = entry(dest, rel)
        if at_src is not None and at_src != want:
            problems.append('%s: source changed: %r' % (rel, at_src))
        if at_dst is not None and at_dst != want:
            problems.append('%s: corrupt or partial under its final destination name' % rel)
        if at_src != want and at_dst != want:
            problems.append('%s: LOST (neither at the source nor at the destination)' % rel)
    for rel, state in journal_rows(state_dir):
        if state == 'done' and rel in original and entry(dest, rel) != original[rel]:
            problems.append('%s: journal says done but the destination is not whole' % rel)
    return problems


def check_final(original: dict, src: Path, dest: Path, state_dir: Path) -> list:
    """Violations of the state after a clean rerun."""
    problems = check_invariant(original, src, dest, state_dir)
    for rel, want in original.items():
        if entry(dest, rel) != want:
            problems.append('%s: not at the destination after recovery' % rel)
        if want[0] != 'dir' and entry(src, rel) is not None:
            problems.append('%s: still at the source after recovery' % rel)
    leftovers = [str(p.relative_to(src)) for p in src.rglob('*')]
    if leftovers:
        problems.append('source not empty: %s' % leftovers)
    parts = [str(p) for p in dest.rglob('*') if PART.match(p.name)]
    if parts:
        problems.append('part files left: %s' % parts)
    if 'a.txt' in original and 'd1/hard.txt' in original:
        a, h = dest / 'a.txt', dest / 'd1' / 'hard.txt'
        if a.exists() and h.exists() and a.stat().st_ino != h.stat().st_ino:
            problems.append('hard-link pair split at the destination')
    rows = journal_rows(state_dir)
    not_done = [(r, s) for r, s in rows if s != 'done']
    if not rows or not_done:
        problems.append('journal not complete: %s' % (not_done or 'no rows'))
    return problems


def params(src: Path, dest: Path, state_dir: Path, **extra) -> dict:
    values = {'src': str(src), 'dest': str(dest), 'state_dir': str(state_dir), 'workers': 1,
              'checkpoint_size': CHECKPOINT, 'buffer_size': BUFFER, 'hash': 'sha256'}
    values.update(extra)
    return values


def env(faults: str = '') -> dict:
    environ = dict(os.environ, PYTHONHASHSEED='0', PYTHONDONTWRITEBYTECODE='1')
    environ.pop('DURABLE_MOVER_FAULTS', None)
    if faults:
        environ['DURABLE_MOVER_FAULTS'] = faults
    return environ


def run_core(values: dict, prefix=(), faults: str = '', timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real core in a child process (optionally under strace)."""
    cmd = list(prefix) + [sys.executable, str(CLI), json.dumps(values)]
    return subprocess.run(cmd, env=env(faults), capture_output=True, text=True, timeout=timeout,
                          check=False)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    return json.loads(lines[-1]) if lines else {}


def reset(*dirs: Path) -> None:
    for path in dirs:
        if path.is_dir() and not os.path.ismount(path):
            shutil.rmtree(path)
        elif path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
