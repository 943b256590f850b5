# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible's share of a move: ansible-playbook playbooks/migrate.yml against the core alone.

Loop-mounted ext4 source and xfs destination (as bench.py), localhost, the
role's defaults (async move, 10 s poll interval, preflight on). For each
workload, the core (tests/tools/mover_cli.py) and the playbook run
alternately on the same data, page cache dropped before each run; then the
rerun of the finished job (nothing to do) through both. Prints medians, the
playbook's seconds beyond the core's and its ratio to them, and where the
playbook's time went (seconds per task, from callback_plugins/task_times.py).

    sudo python3 benchmarks/ansible_share.py                     # one file, 20,000 files (3 runs)
    sudo python3 benchmarks/ansible_share.py --rerun-files 200000  # also the rerun of a 200,000-file job
    sudo python3 benchmarks/ansible_share.py --quick               # tiny: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  pylint: disable=wrong-import-position

CALLBACKS = os.path.join(HERE, 'callback_plugins')
BEFORE = 'playbook (--compare-with)'


def core_cmd(args, src, dest, state):
    return bench.ours_core(src, dest, state, args.python)


def playbook_cmd(args, src, dest, state, times, repo=None):
    """ansible-playbook playbooks/migrate.yml of this tree, or of `repo` (another
    checkout, e.g. the code before a change, run in the same rounds)."""
    cmd, env = bench.ours_ansible(src, dest, state, args.python)
    cmd = [c for c in cmd if c != 'migrate_async=false']
    cmd = cmd[:-1] if cmd[-1] == '-e' else cmd
    if repo:
        cmd[1] = os.path.join(repo, 'playbooks', 'migrate.yml')
        env = dict(env, ANSIBLE_CONFIG=os.path.join(repo, 'ansible.cfg'))
    for extra in args.extra_var:
        cmd += ['-e', extra]
    env = dict(env, ANSIBLE_CALLBACK_PLUGINS=CALLBACKS, ANSIBLE_CALLBACKS_ENABLED='task_times',
               DURABLE_MOVER_TASK_TIMES=times or '')
    if args.pipelining:
        env['ANSIBLE_PIPELINING'] = 'true'
    return cmd, env


def run_one(args, tool, src, dest, state, times):
    if tool == 'core':
        cmd, env = core_cmd(args, src, dest, state)
    else:
        cmd, env = playbook_cmd(args, src, dest, state, times, args.compare_with if tool == BEFORE else None)
    elapsed, _rss, proc = bench.timed(cmd, env)
    if proc.returncode != 0:
        raise SystemExit('%s failed (rc %d):\n%s\n%s' % (tool, proc.returncode, proc.stdout[-3000:],
                                                         proc.stderr[-3000:]))
    return elapsed


class Workload:
    def __init__(self, args, mounts, name, make):
        self.args, self.mounts, self.name, self.make = args, mounts, name, make
        self.tools = ['core', 'playbook'] + ([BEFORE] if args.compare_with else [])
        self.samples = {key: [] for tool in self.tools for key in (tool, tool + ' rerun')}
        self.tasks = {tool: [] for tool in self.tools}          # {task: seconds} of each playbook run
        self.rerun_tasks = {tool: [] for tool in self.tools}

    def paths(self):
        return (os.path.join(self.mounts.src, 'share', 'src'), os.path.join(self.mounts.dest, 'share', 'dest'),
                os.path.join(self.mounts.work, 'share-state'))

    def reset(self):
        src, dest, state = self.paths()
        for path in (src, dest, state, state + '-reports'):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(src), exist_ok=True)
        self.make(src)
        return src, dest, state

    def run(self):
        times = os.path.join(self.mounts.work, 'task-times.json')
        for run in range(self.args.runs):
            # each round starts with the next tool
            for tool in self.tools[run % len(self.tools):] + self.tools[:run % len(self.tools)]:
                src, dest, state = self.reset()
                bench.drop_caches(self.args.settle)
                elapsed = run_one(self.args, tool, src, dest, state, times)
                self.samples[tool].append(elapsed)
                self.tasks[tool].append(_task_times(times))
                # the rerun of the finished job: nothing to do
                bench.drop_caches(self.args.settle)
                again = run_one(self.args, tool, src, dest, state, times)
                self.samples[tool + ' rerun'].append(again)
                self.rerun_tasks[tool].append(_task_times(times))
                print('  %-26s run %d: %7.2f s, rerun %6.2f s' % (tool, run + 1, elapsed, again), flush=True)
        self.reset()
        shutil.rmtree(self.paths()[0], ignore_errors=True)
        return self

    def rows(self, out):
        med = {k: statistics.median(v) for k, v in self.samples.items() if v}
        out.append('\n### %s\n' % self.name)
        out.append('| run | core alone, s | through ansible-playbook, s | playbook - core | playbook / core |')
        out.append('|---|---:|---:|---:|---:|')
        for tool in self.tools[1:]:
            name = 'ansible-playbook' if tool == 'playbook' else 'ansible-playbook of %s' % self.args.compare_with
            for label, suffix in (('the job', ''), ('rerun of the finished job', ' rerun')):
                core, play = 'core' + suffix, tool + suffix
                extra = statistics.median([p - c for p, c in zip(self.samples[play], self.samples[core])])
                ratio = statistics.median([p / c for p, c in zip(self.samples[play], self.samples[core])])
                out.append('| %s, %s | %.2f (%s) | %.2f (%s) | %+.2f s | %.1fx |'
                           % (label, name, med[core], ' '.join('%.2f' % v for v in self.samples[core]), med[play],
                              ' '.join('%.2f' % v for v in self.samples[play]), extra, ratio))
        for tool in self.tools[1:]:
            for title, runs in (('the job', self.tasks[tool]), ('the rerun', self.rerun_tasks[tool])):
                out.append('\nWhere the time of %s went (%s, median s per task name, the slowest):\n'
                           % ('ansible-playbook' if tool == 'playbook' else self.args.compare_with, title))
                out.append(_top_tasks(runs))
        print('\n'.join(out[-(len(out) - out.index('\n### %s\n' % self.name)):]), flush=True)


def _task_times(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    os.unlink(path)
    return {name: (count, seconds) for name, (count, seconds) in data.items()}


def _top_tasks(runs, count=8):
    names = {name for run in runs for name in run}
    medians = []
    for name in names:
        seconds = statistics.median([run.get(name, (0, 0.0))[1] for run in runs])
        calls = statistics.median([run.get(name, (0, 0.0))[0] for run in runs])
        medians.append((seconds, calls, name))
    medians.sort(reverse=True)
    lines = ['| task | runs | seconds |', '|---|---:|---:|']
    lines += ['| %s | %g | %.2f |' % (name, calls, seconds) for seconds, calls, name in medians[:count]]
    return '\n'.join(lines)


def rerun_only(args, mounts, out):
    """The rerun of a finished job of many files through the playbook (moved once by the core):
    its seconds, one per run."""
    count = args.rerun_files
    src = os.path.join(mounts.src, 'big-rerun', 'src')
    dest = os.path.join(mounts.dest, 'big-rerun', 'dest')
    state = os.path.join(mounts.work, 'big-rerun-state')
    started = time.monotonic()
    bench.make_small(src, max(1, count // 1000), min(count, 1000), 0)
    print('  generated %d files in %.0f s' % (count, time.monotonic() - started), flush=True)
    first = run_one(args, 'core', src, dest, state, None)
    print('  moved by the core in %.1f s' % first, flush=True)
    times = os.path.join(mounts.work, 'task-times.json')
    samples, tasks = [], []
    for _run in range(args.runs):
        bench.drop_caches(args.settle)
        samples.append(run_one(args, 'playbook', src, dest, state, times))
        tasks.append(_task_times(times))
    start = len(out)
    out.append('\n### Rerun of a finished job of %d files (empty files in %d dirs)\n' % (count, count // 1000))
    out.append('| run | ansible-playbook, s |')
    out.append('|---|---:|')
    runs = ' '.join('%.2f' % v for v in samples)
    out.append('| rerun, nothing to do | %.2f (%s) |' % (statistics.median(samples), runs))
    out.append('\nWhere its time went:\n')
    out.append(_top_tasks(tasks))
    print('\n'.join(out[start:]), flush=True)
    for path in (os.path.dirname(src), os.path.dirname(dest), state, state + '-reports'):
        shutil.rmtree(path, ignore_errors=True)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--settle', type=float, default=5.0)
    parser.add_argument('--small-dirs', type=int, default=100)
    parser.add_argument('--small-files', type=int, default=200, help='per directory')
    parser.add_argument('--rerun-files', type=int, default=0, help='also the rerun of a job of this many files')
    parser.add_argument('--only', default='one,small')
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--python', default=os.path.join(bench.REPO, '.venv', 'bin', 'python')
                        if os.path.exists(os.path.join(bench.REPO, '.venv', 'bin', 'python')) else sys.executable)
    parser.add_argument('--output', default=None, help='also write the markdown report here')
    parser.add_argument('--extra-var', action='append', default=[], help='-e for the playbook (repeatable)')
    parser.add_argument('--compare-with', default=None, metavar='CHECKOUT',
                        help='also run the playbook of this other checkout (e.g. the code before a change), '
                             'in the same rounds')
    parser.add_argument('--pipelining', action='store_true', help='ANSIBLE_PIPELINING=true for the playbook')
    parser.add_argument('--quick', action='store_true', help='tiny sizes, one run: a smoke test')
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.settle, args.small_dirs, args.small_files = 1, 0.0, 3, 20
        args.rerun_files = min(args.rerun_files, 2000)
    if os.geteuid() != 0:
        raise SystemExit('ansible_share.py needs root: it mounts loop filesystems and drops the page cache')
    only = set(args.only.split(','))
    work = tempfile.mkdtemp(prefix='dm-share-', dir=args.workdir)
    mounts = bench.Mounts(work, src_mb=2048, dest_mb=2048, inodes=max(2 * args.rerun_files, 200000))
    out = ['# durable.mover: Ansible\'s share'] + bench.environment(args)
    out.append('- playbook: role defaults%s%s' % (''.join(' -e ' + e for e in args.extra_var),
                                                  ', ANSIBLE_PIPELINING=true' if args.pipelining else ''))
    out.append('- load average at the start: %s' % ' '.join('%.2f' % v for v in os.getloadavg()))
    print('\n'.join(out), flush=True)
    try:
        if 'one' in only:
            print('\n== one file (1 MiB)', flush=True)
            Workload(args, mounts, 'One file of 1 MiB, ext4 -> xfs',
                     lambda src: bench.make_small(src, 1, 1, bench.MIB)).run().rows(out)
        if 'small' in only:
            files = args.small_dirs * args.small_files
            print('\n== %d files of 4 KiB' % files, flush=True)
            Workload(args, mounts, '%d files of 4 KiB in %d dirs, ext4 -> xfs' % (files, args.small_dirs),
                     lambda src: bench.make_small(src, args.small_dirs, args.small_files, 4096)).run().rows(out)
        if args.rerun_files:
            print('\n== rerun of a finished %d-file job' % args.rerun_files, flush=True)
            rerun_only(args, mounts, out)
    finally:
        mounts.close()
        shutil.rmtree(work, ignore_errors=True)
    out.append('- load average at the end: %s' % ' '.join('%.2f' % v for v in os.getloadavg()))
    if args.output:
        with open(args.output, 'w') as handle:
            handle.write('\n'.join(out) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
