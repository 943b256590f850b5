# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real trees through ansible-playbook (issue 13): ours against cp -a + sync + rm -rf and rsync -aHAX + sync.

Loop-mounted ext4 source and xfs destination (bench.Mounts), in a private mount
namespace. Each workload is a template tree made once and kept in --cache-dir:
the Linux kernel source (Debian's linux-source package, downloaded with
`apt-get download` and unpacked once), a mixed tree (a few large files, many
small ones in nested directories), many 4 KiB files, one big file, each also as
one tar file and with its manifest. Before every run the template is restored
onto the source filesystem from its tar file (not timed) and the page cache
dropped. The tools: `ansible-playbook
playbooks/migrate.yml` on localhost with the role's defaults (as
ansible_share.py runs it), the core alone (tests/tools/mover_cli.py), `cp -a` +
`sync` + `rm -rf` and `rsync -aHAX --remove-source-files` + removal of the
directories rsync leaves empty + `sync`. Every tool runs in every round, each
round starting with the next tool; after each run the destination's manifest
(type, mode, owner, size, mtime, SHA-256 of every file, symlink targets, not
timed) is compared with the template's, and what is left at the source counted.

Quiet rounds, then loaded rounds: before each loaded run a dd writer (O_DIRECT,
fsync) and a dd reader (O_DIRECT) start on a third loop filesystem of their own
(its loop device in direct-I/O mode, so both reach the disk) and stop after it.
Then Ansible's share (ansible_share.py): a one-file job against the core alone,
and the rerun of a finished --rerun-files job. Reports every run, the medians
of same-round ratios, the module's own seconds against the playbook's, and the
issue's targets met or not.

    sudo python3 benchmarks/real_trees.py              # everything, one round each (make bench)
    sudo python3 benchmarks/real_trees.py --quick      # a few minutes, no kernel tree (make bench-quick)
    sudo python3 benchmarks/real_trees.py --only kernel --runs 3 --loaded-runs 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ansible_share  # noqa: E402  pylint: disable=wrong-import-position
import bench  # noqa: E402  pylint: disable=wrong-import-position

MIB = bench.MIB
PLAYBOOK = 'ours (ansible-playbook)'
CORE = 'ours (core)'
CP = 'cp -a + sync + rm -rf'
RSYNC = 'rsync -aHAX + sync'
TOOLS = (PLAYBOOK, CORE, CP, RSYNC)
PEERS = (CP, RSYNC)
OURS = (PLAYBOOK, CORE)
PHASES = ('quiet', 'loaded')
NS_MARK = 'DURABLE_MOVER_BENCH_NS'


def load_text():
    return ' '.join('%.2f' % v for v in os.getloadavg())


# -- templates: made once, kept in the cache directory ------------------------------


def kernel_deb(cache):
    """The cached linux-source-X .deb, downloaded with apt-get if none is there yet."""
    found = sorted(glob.glob(os.path.join(cache, 'linux-source-*.deb')))
    if found:
        return found[-1]
    depends = bench.sh(['apt-cache', 'depends', 'linux-source'], check=False).stdout
    match = re.search(r'Depends:\s*(linux-source-\S+)', depends)
    name = match.group(1) if match else 'linux-source'
    print('  apt-get download %s into %s' % (name, cache), flush=True)
    bench.sh(['apt-get', 'download', name], cwd=cache)
    found = sorted(glob.glob(os.path.join(cache, 'linux-source-*.deb')))
    if not found:
        raise SystemExit('apt-get download %s left no linux-source-*.deb in %s' % (name, cache))
    return found[-1]


def kernel_template(args):
    """The kernel source tree unpacked from the .deb's usr/src/linux-source-*.tar.xz, once."""
    deb = args.kernel_deb or kernel_deb(args.cache_dir)
    tree = os.path.join(args.cache_dir, re.sub(r'(_all)?\.deb$', '', os.path.basename(deb)))
    if not os.path.isdir(tree):
        partial = tree + '.partial'
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        started = time.monotonic()
        bench.sh(['bash', '-o', 'pipefail', '-c', 'dpkg-deb --fsys-tarfile "$0" | '
                  'tar -xO --wildcards "./usr/src/linux-source-*.tar.xz" | tar -xJ -C "$1"', deb, partial])
        os.rename(partial, tree)
        print('  unpacked %s in %.0f s' % (os.path.basename(deb), time.monotonic() - started), flush=True)
    return tree


def generated(args, name, make):
    """A generated template tree, made once (deterministic contents) and reused."""
    tree = os.path.join(args.cache_dir, 'generated', name)
    if not os.path.isdir(tree):
        partial = tree + '.partial'
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        started = time.monotonic()
        make(partial)
        os.rename(partial, tree)
        print('  generated %s in %.0f s' % (name, time.monotonic() - started), flush=True)
    return tree


def make_mixed(root, large_count, large_mib, small_count):
    """large_count files of large_mib MiB, small_count files of 1-64 KiB in nested directories,
    a symlink every 500 files, a few modes: the same bytes on every machine."""
    pool = bench._block(b'mixed', 8 * MIB)  # pylint: disable=protected-access
    os.makedirs(os.path.join(root, 'large'))
    for index in range(large_count):
        with open(os.path.join(root, 'large', 'large%02d.bin' % index), 'wb') as handle:
            for mib in range(large_mib):
                offset = (index * 7919 + mib * 4099) % (len(pool) - MIB)
                handle.write(pool[offset:offset + MIB])
    rng = random.Random(13)
    for index in range(small_count):
        folder = index // 20
        path = os.path.join(root, 'tree', 'd%02d' % (folder // 25), 's%02d' % (folder % 25))
        if index % 20 == 0:
            os.makedirs(path)
        size = rng.randint(1024, 64 * 1024)
        offset = rng.randrange(len(pool) - size)
        name = os.path.join(path, 'f%05d' % index)
        with open(name, 'wb') as handle:
            handle.write(pool[offset:offset + size])
        if index % 7 == 0:
            os.chmod(name, 0o640)
        elif index % 11 == 0:
            os.chmod(name, 0o755)
        if index % 500 == 0:
            os.symlink('f%05d' % index, os.path.join(path, 'link%05d' % index))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(MIB), b''):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(root):
    """{relpath: entry} of everything under root: what every tool must produce (files hashed
    in a few threads: the reads wait on the disk, the hashing releases the GIL)."""
    result, files = {}, []
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                result[rel] = ('l', os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = ('d', stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
            elif stat.S_ISREG(info.st_mode):
                result[rel] = ('f', stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_size,
                               info.st_mtime_ns)
                files.append(rel)
            else:
                result[rel] = ('?', info.st_mode)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for rel, digest in zip(files, pool.map(_sha256, [os.path.join(root, rel) for rel in files])):
            result[rel] += (digest,)
    return result


def template_manifest(tree):
    """The template's manifest, computed once and kept beside it."""
    path = tree + '.manifest.json'
    try:
        with open(path) as handle:
            return {rel: tuple(entry) for rel, entry in json.load(handle).items()}
    except (OSError, ValueError):
        pass
    result = manifest(tree)
    with open(path + '.partial', 'w') as handle:
        json.dump(result, handle)
    os.rename(path + '.partial', path)
    return result


def template_archive(tree):
    """The template as one tar file (pax: nanosecond mtimes), made once: restoring it reads one
    file, not tens of thousands, after each drop of the page cache."""
    path = tree + '.tar'
    if not os.path.exists(path):
        bench.sh(['tar', '--format=posix', '-C', tree, '-cf', path + '.partial', '.'])
        os.rename(path + '.partial', path)
    return path


def describe(expected):
    files = [e for e in expected.values() if e[0] == 'f']
    return {'files': len(files), 'bytes': sum(e[4] for e in files),
            'dirs': sum(1 for e in expected.values() if e[0] == 'd'),
            'symlinks': sum(1 for e in expected.values() if e[0] == 'l')}


# -- a competing I/O load -------------------------------------------------------------


class Load:
    """A dd writer (O_DIRECT + fsync) and a dd reader (O_DIRECT) on an ext4 of their own,
    whose loop device does direct I/O: both reach the disk, not the host's page cache."""

    WRITER = 'while :; do dd if=/dev/zero of="$0/w" bs=1M count=256 oflag=direct conv=fsync status=none; done'
    READER = 'while :; do dd if="$0/r" of=/dev/null bs=1M iflag=direct status=none; done'

    def __init__(self, work, read_mib):
        self.mount = os.path.join(work, 'load-fs')
        self.image = self.mount + '.img'
        with open(self.image, 'wb') as handle:
            handle.truncate((read_mib + 1024) * MIB)
        bench.sh(['mkfs.ext4', '-F', '-q', self.image])
        os.makedirs(self.mount)
        bench.sh(['mount', '-o', 'loop', self.image, self.mount])
        self.mounted = True
        device = bench.sh(['losetup', '-j', self.image]).stdout.split(':', 1)[0]
        direct = bench.sh(['losetup', '--direct-io=on', device], check=False)
        self.direct_io = direct.returncode == 0
        bench.sh(['dd', 'if=/dev/zero', 'of=%s/r' % self.mount, 'bs=1M', 'count=%d' % read_mib,
                  'oflag=direct', 'conv=fsync', 'status=none'])
        self.procs = []

    def start(self):
        for script in (self.WRITER, self.READER):
            self.procs.append(subprocess.Popen(['sh', '-c', script, self.mount], start_new_session=True,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)   # the group this Load started, by its id
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs = []

    def close(self):
        self.stop()
        if self.mounted:
            for _attempt in range(5):
                if bench.sh(['umount', self.mount], check=False).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                bench.sh(['umount', '-l', self.mount], check=False)
            for line in bench.sh(['losetup', '-j', self.image], check=False).stdout.splitlines():
                bench.sh(['losetup', '-d', line.split(':', 1)[0]], check=False)
            self.mounted = False
        if os.path.exists(self.image):
            os.unlink(self.image)


# -- one workload: every tool, quiet and loaded rounds ------------------------------------


class Run:  # pylint: disable=too-few-public-methods
    def __init__(self, phase, round_no, tool, seconds, rss, module, check):
        self.phase, self.round, self.tool, self.seconds = phase, round_no, tool, seconds
        self.rss, self.module, self.check = rss, module, check


class Workload:
    def __init__(self, args, mounts, load, key, title, template):
        self.args, self.mounts, self.load, self.key, self.title = args, mounts, load, key, title
        self.template = template
        started = time.monotonic()
        self.archive = template_archive(template)
        self.expected = template_manifest(template)
        self.shape = describe(self.expected)
        print('  template: %(files)d files, %(dirs)d dirs, %(symlinks)d symlinks' % self.shape
              + ' (archive and manifest in %.0f s)' % (time.monotonic() - started), flush=True)
        self.runs = []
        self.loadavg = {}
        self.tasks = []

    def paths(self):
        return (os.path.join(self.mounts.src, 'work', 'src'), os.path.join(self.mounts.dest, 'work', 'dest'),
                os.path.join(self.mounts.work, 'state'))

    def reset(self):
        src, dest, state = self.paths()
        for path in (src, dest, state, state + '-reports'):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(src)
        os.makedirs(dest)
        bench.sh(['tar', '-xpf', self.archive, '-C', src])
        return src, dest, state

    def command(self, tool, src, dest, state, times):
        if tool == PLAYBOOK:
            return ansible_share.playbook_cmd(self.args, src, dest, state, times)
        if tool == CORE:
            return bench.ours_core(src, dest, state, self.args.python)
        if tool == CP:
            return ['sh', '-c', 'cp -a "$0"/. "$1"/ && sync && rm -rf "$0"/* "$0"/.[!.]* "$0"/..?*', src, dest], None
        # rsync leaves the source's directories, emptied: removed here (timed), as ours removes them
        return ['sh', '-c', 'rsync -aHAX --remove-source-files "$0"/ "$1"/ && '
                'find "$0" -mindepth 1 -type d -empty -delete && sync', src, dest], None

    def one(self, phase, round_no, tool):
        src, dest, state = self.reset()
        times = os.path.join(self.mounts.work, 'task-times.json')
        cmd, env = self.command(tool, src, dest, state, times)
        bench.drop_caches(self.args.settle)
        if phase == 'loaded':
            self.load.start()
            time.sleep(self.args.load_ramp)
        try:
            elapsed, rss, proc = bench.timed(cmd, env)
        finally:
            if phase == 'loaded':
                self.load.stop()
        if proc.returncode != 0:
            raise SystemExit('%s failed on %s (rc %d):\n%s\n%s'
                             % (tool, self.title, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        module = self.module_seconds(tool, proc, state)
        if tool == PLAYBOOK:
            self.tasks.append(ansible_share._task_times(times))  # pylint: disable=protected-access
        check = self.verify(src, dest)
        self.runs.append(Run(phase, round_no, tool, elapsed, rss, module, check))
        print('  %-7s round %d %-26s %8.2f s  module %s  %s' % (
            phase, round_no, tool, elapsed, '-' if module is None else '%.2f s' % module, check), flush=True)

    @staticmethod
    def module_seconds(tool, proc, state):
        """The module's own seconds: its report's elapsed_seconds (playbook) or the core's result."""
        try:
            if tool == PLAYBOOK:
                with open(os.path.join(state + '-reports', 'hosts', 'localhost.json')) as handle:
                    return float(json.load(handle)['report']['elapsed_seconds'])
            if tool == CORE:
                return float(json.loads(proc.stdout.splitlines()[-1])['elapsed_seconds'])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
        return None

    def verify(self, src, dest):
        got = manifest(dest)
        left = len(manifest(src))
        if got == self.expected and not left:
            return 'same'
        wrong = sum(1 for key, value in self.expected.items() if got.get(key) != value)
        extra = sum(1 for key in got if key not in self.expected)
        return 'DIFFERENT: %d of %d entries wrong or missing, %d extra, %d left at the source' % (
            wrong, len(self.expected), extra, left)

    def run(self):
        for phase, rounds in (('quiet', self.args.runs), ('loaded', self.args.loaded_runs)):
            if not rounds:
                continue
            start = load_text()
            for round_no in range(rounds):
                tools = list(self.args.tools)
                shift = round_no % len(tools)
                for tool in tools[shift:] + tools[:shift]:
                    self.one(phase, round_no + 1, tool)
            self.loadavg[phase] = (start, load_text())
        src, dest, state = self.paths()
        for path in (src, dest, state, state + '-reports'):
            shutil.rmtree(path, ignore_errors=True)
        return self

    # -- numbers --------------------------------------------------------------------

    def samples(self, phase, tool):
        return {r.round: r for r in self.runs if r.phase == phase and r.tool == tool}

    def paired(self, phase, tool, other, how='ratio'):
        """The median over rounds of tool / other (or tool - other) in the same round; None if never both."""
        mine, theirs = self.samples(phase, tool), self.samples(phase, other)
        values = []
        for round_no, run in mine.items():
            if round_no in theirs:
                values.append(run.seconds / theirs[round_no].seconds if how == 'ratio'
                              else run.seconds - theirs[round_no].seconds)
        return statistics.median(values) if values else None

    def median(self, phase, tool, field='seconds'):
        values = [getattr(r, field) for r in self.samples(phase, tool).values() if getattr(r, field) is not None]
        return statistics.median(values) if values else None

    def report(self, out):
        start = len(out)
        shape = self.shape
        out.append('\n## %s\n' % self.title)
        out.append('%d files (%.0f MiB), %d directories, %d symlinks; ext4 -> xfs. Load average (1, 5, 15 min) '
                   'at the start and the end: %s.' % (
                       shape['files'], shape['bytes'] / MIB, shape['dirs'], shape['symlinks'],
                       '; '.join('%s %s / %s' % (phase, a, b) for phase, (a, b) in self.loadavg.items())))
        phases = [p for p in PHASES if p in self.loadavg]
        out.append('\n### Medians of same-round ratios\n')
        out.append('| ratio | ' + ' | '.join(phases) + (' | loaded / quiet |' if len(phases) == 2 else ' |'))
        out.append('|---|' + '---:|' * (len(phases) + (1 if len(phases) == 2 else 0)))
        for mine in [t for t in OURS if t in self.args.tools]:
            for peer in [t for t in PEERS if t in self.args.tools]:
                values = [self.paired(p, mine, peer) for p in phases]
                if len(phases) == 2:
                    values.append(values[1] / values[0] if None not in values else None)
                out.append('| %s / %s | %s |' % (mine, peer, ' | '.join(_fmt(v, 'x') for v in values)))
        if PLAYBOOK in self.args.tools and CORE in self.args.tools:
            for how, sign, unit in (('ratio', '/', 'x'), ('difference', '-', ' s')):
                cells = [_fmt(self.paired(p, PLAYBOOK, CORE, how=how), unit) for p in phases]
                out.append('| %s %s %s | %s |' % (PLAYBOOK, sign, CORE, ' | '.join(cells + [''] * (len(phases) == 2))))
        out.append('\n### Medians, seconds (module: the move\'s own elapsed_seconds, from its report)\n')
        out.append('| tool | ' + ' | '.join('%s s | %s module s' % (p, p) for p in phases) + ' |')
        out.append('|---|' + '---:|---:|' * len(phases))
        for tool in self.args.tools:
            cells = []
            for phase in phases:
                cells += [_fmt(self.median(phase, tool), ''), _fmt(self.median(phase, tool, 'module'), '')]
            out.append('| %s | %s |' % (tool, ' | '.join(cells)))
        out.append('\n### Every run\n')
        out.append('| phase | round | tool | seconds | module s | peak RSS MiB | destination vs source |')
        out.append('|---|---:|---|---:|---:|---:|---|')
        for run in self.runs:
            out.append('| %s | %d | %s | %.2f | %s | %.0f | %s |' % (
                run.phase, run.round, run.tool, run.seconds, _fmt(run.module, ''), run.rss, run.check))
        if self.tasks:
            out.append('\n### Where the playbook\'s time went (median s per task, the slowest, all its runs)\n')
            out.append(ansible_share._top_tasks(self.tasks, 6))  # pylint: disable=protected-access
        print('\n'.join(out[start:]), flush=True)


def _fmt(value, unit):
    if value is None:
        return '-'
    return ('%+.2f%s' if unit == ' s' else '%.2f%s') % (value, unit)


# -- the targets ---------------------------------------------------------------------


def targets(workloads, share, rerun, out):
    """One row per target of issue 13 that this run measured: the numbers, met or not."""
    rows = []

    def ratio_row(key, label, peer, limit):
        work = workloads.get(key)
        if not work or PLAYBOOK not in work.args.tools or peer not in work.args.tools:
            return
        for phase in [p for p in PHASES if p in work.loadavg]:
            value = work.paired(phase, PLAYBOOK, peer)
            rows.append(('%s, %s: ansible-playbook <= %.1fx %s' % (label, phase, limit, peer),
                         _fmt(value, 'x'), 'yes' if value is not None and value <= limit else 'no'))

    for key, label in (('kernel', 'Linux kernel source'), ('mixed', 'mixed tree')):
        ratio_row(key, label, CP, 1.0)
        ratio_row(key, label, RSYNC, 1.3)
    ratio_row('small', 'many 4 KiB files', RSYNC, 1.0)
    ratio_row('big', 'one big file', CP, 1.1)
    for key, work in workloads.items():
        phases = [p for p in PHASES if p in work.loadavg]
        if len(phases) < 2 or PLAYBOOK not in work.args.tools:
            continue
        for peer in [t for t in PEERS if t in work.args.tools]:
            quiet, loaded = (work.paired(p, PLAYBOOK, peer) for p in phases)
            if quiet is None or loaded is None:
                continue
            rows.append(('%s under load: ansible-playbook not further behind %s than quiet (loaded ratio / quiet '
                         'ratio <= 1)' % (work.title.split(':')[0].split(' (')[0], peer), '%.2fx / %.2fx = %.2f' % (loaded, quiet, loaded / quiet),
                         'yes' if loaded <= quiet else 'no'))
    small = workloads.get('small')
    if small and PLAYBOOK in small.args.tools and CORE in small.args.tools:
        extra = small.paired('quiet', PLAYBOOK, CORE, how='difference')
        rows.append(('many 4 KiB files: ansible-playbook <= core alone + 3 s', _fmt(extra, ' s'),
                     'yes' if extra is not None and extra <= 3 else 'no'))
    if share:
        extra = statistics.median([p - c for p, c in zip(share.samples['playbook'], share.samples['core'])])
        rows.append(('one-file job: ansible-playbook <= core alone + 3 s', _fmt(extra, ' s'),
                     'yes' if extra <= 3 else 'no'))
    if rerun:
        count, samples = rerun
        value = statistics.median(samples)
        rows.append(('rerun of a finished %d-file job through ansible-playbook < 3 s' % count, '%.2f s' % value,
                     'yes' if value < 3 else 'no'))
    out.append('\n## Against the targets of issue 13\n')
    out.append('| target | measured (median) | met |')
    out.append('|---|---:|---|')
    out += ['| %s | %s | %s |' % row for row in rows]
    print('\n'.join(out[-len(rows) - 3:]), flush=True)


# -- main ----------------------------------------------------------------------------


def private_namespace():
    """Re-run in a private mount namespace: our loop mounts are nobody else's, and go with us."""
    if os.environ.get(NS_MARK) or not shutil.which('unshare'):
        return
    os.environ[NS_MARK] = '1'
    os.execvp('unshare', ['unshare', '-m', '--propagation', 'private', sys.executable] + sys.argv)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', default='kernel,mixed,small,big,share,rerun',
                        help='workloads: kernel, mixed, small, big; share (one-file job vs core), rerun')
    parser.add_argument('--tools', default=','.join(TOOLS), help='comma-separated, of: ' + ', '.join(TOOLS))
    parser.add_argument('--runs', type=int, default=1, help='quiet rounds per workload')
    parser.add_argument('--loaded-runs', type=int, default=1, help='loaded rounds per workload')
    parser.add_argument('--kernel-runs', type=int, default=None, help='quiet rounds of the kernel tree')
    parser.add_argument('--kernel-loaded-runs', type=int, default=None, help='loaded rounds of the kernel tree')
    parser.add_argument('--settle', type=float, default=3.0, help='seconds after each drop of the page cache')
    parser.add_argument('--load-ramp', type=float, default=2.0, help='seconds the load runs before each loaded run')
    parser.add_argument('--load-read-mib', type=int, default=1024, help='size of the load\'s read file')
    parser.add_argument('--cache-dir', default='/var/cache/durable-mover-bench')
    parser.add_argument('--kernel-deb', default=None, help='a linux-source .deb to use instead of downloading one')
    parser.add_argument('--mixed-large', type=int, default=3, help='large files of the mixed tree')
    parser.add_argument('--mixed-large-mib', type=int, default=256)
    parser.add_argument('--mixed-small', type=int, default=10000, help='small files (1-64 KiB) of the mixed tree')
    parser.add_argument('--small-dirs', type=int, default=100)
    parser.add_argument('--small-files', type=int, default=200, help='per directory')
    parser.add_argument('--big-size', type=int, default=2048, help='MiB')
    parser.add_argument('--share-runs', type=int, default=2, help='rounds of the one-file job (ansible_share.py)')
    parser.add_argument('--rerun-files', type=int, default=200000)
    parser.add_argument('--extra-var', action='append', default=[], help='-e for the playbook (repeatable)')
    parser.add_argument('--pipelining', action='store_true', help='ANSIBLE_PIPELINING=true for the playbook')
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--python', default=os.path.join(bench.REPO, '.venv', 'bin', 'python')
                        if os.path.exists(os.path.join(bench.REPO, '.venv', 'bin', 'python')) else sys.executable)
    parser.add_argument('--output', default=None, help='also write the markdown report here')
    parser.add_argument('--quick', action='store_true', help='a few minutes: small trees, no kernel, one round each')
    parser.add_argument('--tiny', action='store_true', help='tiny trees, one round each: a smoke run (tests)')
    args = parser.parse_args(argv)
    if args.quick or args.tiny:
        args.runs, args.loaded_runs, args.share_runs = 1, 1, 1
        args.mixed_large, args.mixed_large_mib, args.mixed_small = 2, 64, 2000
        args.small_dirs, args.small_files, args.big_size, args.rerun_files = 20, 100, 256, 20000
        if args.only == parser.get_default('only'):
            args.only = 'mixed,small,big,share,rerun'
    if args.tiny:
        args.settle, args.load_ramp, args.load_read_mib = 0.0, 0.5, 16
        args.mixed_large, args.mixed_large_mib, args.mixed_small = 2, 2, 100
        args.small_dirs, args.small_files, args.big_size, args.rerun_files = 3, 20, 8, 500
    args.tools = [t.strip() for t in args.tools.split(',') if t.strip()]
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        raise SystemExit('unknown tool(s) %s; known: %s' % (', '.join(unknown), ', '.join(TOOLS)))
    args.only = set(args.only.split(','))
    unknown = args.only - {'kernel', 'mixed', 'small', 'big', 'share', 'rerun'}
    if unknown:
        raise SystemExit('unknown workload(s) %s' % ', '.join(sorted(unknown)))
    # ansible_share.py's attributes, for its playbook command and its workloads
    args.compare_with = None
    return args


def templates(args):
    """[(key, title, template dir)] of the workloads asked for, made (or found) in the cache."""
    os.makedirs(args.cache_dir, exist_ok=True)
    wanted = []
    if 'kernel' in args.only:
        tree = kernel_template(args)
        wanted.append(('kernel', 'Linux kernel source (%s)' % os.path.basename(tree), tree))
    if 'mixed' in args.only:
        name = 'mixed-%dx%dM-%d' % (args.mixed_large, args.mixed_large_mib, args.mixed_small)
        wanted.append(('mixed', 'Mixed tree: %d x %d MiB and %d files of 1-64 KiB in nested directories'
                       % (args.mixed_large, args.mixed_large_mib, args.mixed_small),
                       generated(args, name, lambda root: make_mixed(
                           root, args.mixed_large, args.mixed_large_mib, args.mixed_small))))
    if 'small' in args.only:
        name = 'small-%dx%dx4096' % (args.small_dirs, args.small_files)
        wanted.append(('small', '%d files of 4 KiB in %d dirs' % (args.small_dirs * args.small_files, args.small_dirs),
                       generated(args, name, lambda root: bench.make_small(
                           root, args.small_dirs, args.small_files, 4096))))
    if 'big' in args.only:
        name = 'big-%dM' % args.big_size
        wanted.append(('big', 'One %d MiB file' % args.big_size,
                       generated(args, name, lambda root: bench.make_big(root, args.big_size * MIB))))
    return wanted


def tree_mib(path):
    return int(bench.sh(['du', '-sm', path]).stdout.split()[0])


def main(argv=None):
    args = parse(argv)
    if os.geteuid() != 0:
        raise SystemExit('real_trees.py needs root: it mounts loop filesystems and drops the page cache')
    private_namespace()
    # a kill (or a job's timeout) still unmounts and detaches what this run set up
    signal.signal(signal.SIGTERM, lambda _signo, _frame: sys.exit(143))
    started = time.monotonic()
    wanted = templates(args)
    biggest = max([tree_mib(t) for _k, _t, t in wanted] + [64])
    inodes = max(200000, 2 * args.rerun_files if 'rerun' in args.only else 0,
                 *[2 * sum(len(d) + len(f) for _p, d, f in os.walk(t)) for _k, _t, t in wanted])
    work = tempfile.mkdtemp(prefix='dm-real-', dir=args.workdir)
    out = ['# durable.mover: real trees through ansible-playbook (issue 13)'] + bench.environment(args)
    out[-1] = ('- rounds: %d quiet, %d loaded per workload (kernel: %s quiet, %s loaded); each round runs every '
               'tool, each starting with the next; page cache dropped (+%g s settle) before each run'
               % (args.runs, args.loaded_runs, _default(args.kernel_runs, args.runs),
                  _default(args.kernel_loaded_runs, args.loaded_runs), args.settle))
    out.append('- ours: `ansible-playbook playbooks/migrate.yml` on localhost, role defaults%s (as ansible_share.py); '
               'the core alone: tests/tools/mover_cli.py' % ''.join(', -e ' + e for e in args.extra_var))
    out.append('- peers: `cp -a src/. dest/ && sync && rm -rf src/*`; `rsync -aHAX --remove-source-files src/ dest/ '
               '&& find src -mindepth 1 -type d -empty -delete && sync` (rsync leaves the emptied directories; '
               'their removal is timed, as ours removes them)')
    out.append('- load (loaded rounds): dd writer (1 MiB O_DIRECT, fsync every 256 MiB) and dd reader (1 MiB '
               'O_DIRECT, a %d MiB file) on an ext4 of their own, started %g s before each run and stopped after it'
               % (args.load_read_mib, args.load_ramp))
    out.append('- every run checked: the destination\'s manifest (type, mode, owner, size, mtime, SHA-256, '
               'symlink targets) equal to the template\'s, nothing left at the source (not timed)')
    out.append('- load average at the start: %s; other sessions share this machine\'s 2 cores' % load_text())
    print('\n'.join(out), flush=True)
    mounts = bench.Mounts(work, src_mb=max(2 * biggest + 1024, 2048), dest_mb=max(2 * biggest + 1024, 2048),
                          inodes=inodes)
    load = None
    workloads, share, rerun = {}, None, None
    try:
        load = Load(work, args.load_read_mib)
        if not load.direct_io:
            out.append('- note: the load\'s loop device refused direct I/O: its reads may come from the page cache')
        for key, title, template in wanted:
            print('\n== %s' % title, flush=True)
            runs, loaded = args.runs, args.loaded_runs
            if key == 'kernel':
                args.runs, args.loaded_runs = _default(args.kernel_runs, runs), _default(args.kernel_loaded_runs, loaded)
            try:
                workloads[key] = Workload(args, mounts, load, key, title, template).run()
            finally:
                args.runs, args.loaded_runs = runs, loaded
            workloads[key].report(out)
        share, rerun = ansible_share_part(args, mounts, out)
        targets(workloads, share, rerun, out)
    finally:
        if load:
            load.close()
        mounts.close()
        shutil.rmtree(work, ignore_errors=True)
    out.append('\n- load average at the end: %s; whole run %.0f s' % (load_text(), time.monotonic() - started))
    if args.output:
        with open(args.output, 'w') as handle:
            handle.write('\n'.join(out) + '\n')
    return 0


def _default(value, default):
    return default if value is None else value


def ansible_share_part(args, mounts, out):
    """ansible_share.py's one-file job (core alone vs playbook, and their reruns) and its rerun
    of a finished large job, on the same filesystems."""
    share = rerun = None
    runs = args.runs
    args.runs = args.share_runs
    try:
        if args.only & {'share', 'rerun'}:
            out.append('\n## Ansible\'s share (ansible_share.py, quiet)')
        if 'share' in args.only:
            print('\n== Ansible\'s share: one file of 1 MiB', flush=True)
            start = load_text()
            share = ansible_share.Workload(args, mounts, 'Ansible\'s share: one file of 1 MiB, ext4 -> xfs',
                                           lambda src: bench.make_small(src, 1, 1, MIB)).run()
            share.rows(out)
            out.append('\nLoad average at the start and the end: %s / %s.' % (start, load_text()))
        if 'rerun' in args.only and args.rerun_files:
            print('\n== rerun of a finished %d-file job' % args.rerun_files, flush=True)
            start = load_text()
            rerun = (args.rerun_files, ansible_share.rerun_only(args, mounts, out))
            out.append('\nLoad average at the start and the end: %s / %s.' % (start, load_text()))
    finally:
        args.runs = runs
    return share, rerun


if __name__ == '__main__':
    sys.exit(main())
