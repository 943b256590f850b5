# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the test suite as a few pytest processes at once (``make pytest``).

Most of the suite waits: on fsync and flushes of loop and FUSE disks, on
ansible-playbook over SSH, on crash states being mounted. One pytest leaves a
2-core machine half idle; these groups run side by side, each with its own
basetemp (under one private directory), log and JUnit file:

* ``crash``: tests/crash (power cuts, crash sweeps, block-level sweeps);
* ``ansible``: tests/fleet and tests/integration (playbooks over SSH), the
  tests marked ``matrix`` left to ``make matrix``;
* ``core``: everything else (unit, functional, the rest of tests/).

Every test file belongs to exactly one group (``core`` takes tests/ with the
others ignored), so nothing is left out or run twice. ``--only NAME`` runs
some groups; extra arguments go to every pytest. ``--matrix CORES`` also runs
the tests marked ``matrix`` under each ansible-core venv of .matrix/ at the
same time (what ``make matrix`` does, one pytest per version).

Writes tests/output/junit/pytest-<group>.xml, tests/output/pytest-<group>.log,
and, merged, tests/output/junit/pytest.xml and tests/output/pytest.log (the
group logs one after the other, each group's closing line last). Prints a
line per group as it ends, then a table; exits 1 if any group failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / 'tests' / 'output'
GROUPS = {
    'crash': ['tests/crash'],
    'ansible': ['-m', 'not matrix', 'tests/fleet', 'tests/integration'],
    'core': ['-m', 'not matrix', 'tests/', '--ignore=tests/crash', '--ignore=tests/fleet',
             '--ignore=tests/integration'],
}


def launch(name: str, args: list[str], base: Path, extra: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
    log = OUTPUT / ('pytest-%s.log' % name)
    argv = [sys.executable, '-m', 'pytest', '-ra', '-p', 'no:cacheprovider', '--basetemp=%s' % (base / name),
            '--junitxml=%s' % (OUTPUT / 'junit' / ('pytest-%s.xml' % name))] + extra + args
    handle = log.open('w', encoding='utf-8')
    handle.write('>>> %s\n' % ' '.join(argv))
    handle.flush()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env)
    handle.close()
    return proc, log


def closing_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding='utf-8', errors='replace').splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith('=') and (' in ' in line):
            return line.strip('= ').strip()
    return lines[-1] if lines else '(no output)'


def merge_junit(names: list[str]) -> tuple[int, int, int]:
    """One <testsuites> of every group's suites; returns (tests, failed, skipped)."""
    merged = ET.Element('testsuites')
    totals = [0, 0, 0]
    for name in names:
        path = OUTPUT / 'junit' / ('pytest-%s.xml' % name)
        if not path.exists():
            continue
        root = ET.parse(path).getroot()
        for suite in ([root] if root.tag == 'testsuite' else root.findall('testsuite')):
            suite.set('name', 'pytest-%s' % name)
            merged.append(suite)
            totals[0] += int(suite.get('tests', 0))
            totals[1] += int(suite.get('failures', 0)) + int(suite.get('errors', 0))
            totals[2] += int(suite.get('skipped', 0))
    ET.ElementTree(merged).write(OUTPUT / 'junit' / 'pytest.xml', encoding='utf-8', xml_declaration=True)
    return totals[0], totals[1], totals[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('--only', default=','.join(GROUPS), help='groups to run, comma separated')
    parser.add_argument('--matrix', default='', help='ansible-core versions (comma separated) whose .matrix/ '
                        'venvs run the tests marked matrix at the same time')
    parser.add_argument('pytest_args', nargs=argparse.REMAINDER, help='passed to every pytest (after --)')
    opts = parser.parse_args()
    extra = [a for a in opts.pytest_args if a != '--']
    names = [n for n in opts.only.split(',') if n]
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        parser.error('unknown group(s) %s; the groups are %s' % (', '.join(unknown), ', '.join(GROUPS)))
    (OUTPUT / 'junit').mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix='durable-mover-pytest-'))
    running = {}
    started = time.monotonic()
    for name in names:
        running[name] = launch(name, GROUPS[name], base, extra, dict(os.environ))
    for core in [c for c in opts.matrix.split(',') if c]:
        name = 'matrix-%s' % core
        env = dict(os.environ, DURABLE_MOVER_CORE_MATRIX=core)
        running[name] = launch(name, ['-m', 'matrix', 'tests/'], base, extra, env)
    print('>>> pytest groups at once: %s (basetemp %s; logs tests/output/pytest-<group>.log)'
          % (', '.join(running), base), flush=True)
    results = {}
    while len(results) < len(running):
        for name, (proc, log) in running.items():
            if name in results or proc.poll() is None:
                continue
            results[name] = (proc.returncode, time.monotonic() - started, closing_line(log))
            print('>>> %-16s rc %d after %4.0f s: %s' % (name, *results[name]), flush=True)
        time.sleep(1)
    with (OUTPUT / 'pytest.log').open('w', encoding='utf-8') as merged_log:
        for name, (_proc, log) in running.items():
            merged_log.write(log.read_text(encoding='utf-8', errors='replace'))
    tests, failed, skipped = merge_junit(list(running))
    print('>>> pytest groups:')
    for name, (code, seconds, line) in results.items():
        print('  %-16s %-6s %5.0f s  %s' % (name, 'ok' if code == 0 else 'FAILED', seconds, line))
    print('>>> all groups: %d passed, %d failed, %d skipped in %.0f s'
          % (tests - failed - skipped, failed, skipped, time.monotonic() - started))
    subprocess.run(['rm', '-rf', '--one-file-system', str(base)], check=False)
    return 0 if all(code == 0 for code, _s, _l in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
