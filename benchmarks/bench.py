# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""durable.mover benchmarks: ours against mv, cp -a + sync + rm and rsync, side by side.

Builds loop-mounted filesystems (source ext4, destination xfs; root needed),
generates each workload, runs every tool on the same data alternately (page
cache dropped before each cold run), checks that each produced the same
destination tree, and prints median seconds, MB/s or files/s, peak RSS and our
ratio to each peer, plus the physical limits measured on the same filesystems.

    sudo python3 benchmarks/bench.py                 # everything (about 25 minutes)
    sudo python3 benchmarks/bench.py --only big,small --runs 3
    sudo python3 benchmarks/bench.py --quick         # tiny sizes: a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, 'tests', 'tools', 'mover_cli.py')
TIME = shutil.which('time') and '/usr/bin/time'
MIB = 1024 * 1024


def sh(cmd, check=True, **kwargs):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True, **kwargs)


def drop_caches(settle):
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as handle:
        handle.write('3\n')
    time.sleep(settle)  # the VM returns freed memory to its host: the first seconds are erratic


class Mounts:
    """A source ext4 and a destination xfs, each a loop-mounted sparse image."""

    def __init__(self, work, src_mb, dest_mb, inodes=None):
        self.work = work
        self.src = os.path.join(work, 'src-fs')
        self.dest = os.path.join(work, 'dest-fs')
        self.images = []
        try:
            for mount, fstype, size in ((self.src, 'ext4', src_mb), (self.dest, 'xfs', dest_mb)):
                image = mount + '.img'
                with open(image, 'wb') as handle:
                    handle.truncate(size * MIB)
                if fstype == 'ext4':
                    extra = ['-N', str(inodes)] if inodes else []
                    sh(['mkfs.ext4', '-F', '-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0'] + extra + [image])
                else:
                    sh(['mkfs.xfs', '-f', '-q', image])
                os.makedirs(mount, exist_ok=True)
                sh(['mount', '-o', 'loop', image, mount])
                self.images.append((mount, image))
        except BaseException:
            self.close()        # what is mounted already (e.g. mkfs.xfs missing for the second)
            raise

    def close(self):
        for mount, image in self.images:
            for _attempt in range(5):
                if sh(['umount', mount], check=False).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                sh(['umount', '-l', mount], check=False)
            for line in sh(['losetup', '-j', image], check=False).stdout.splitlines():
                sh(['losetup', '-d', line.split(':', 1)[0]], check=False)
            os.unlink(image)


# -- workloads ------------------------------------------------------------------


def _block(seed, size):
    """Incompressible but reproducible bytes: every run of every tool gets the same data."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(b'%s:%d' % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def make_big(root, size):
    os.makedirs(root, exist_ok=True)
    block = _block(b'big', MIB)
    with open(os.path.join(root, 'big.bin'), 'wb') as handle:
        for i in range(size // MIB):
            handle.write(block[i % 256:] + block[:i % 256])
        handle.write(block[:size % MIB])


def make_small(root, dirs, files, size):
    for d in range(dirs):
        path = os.path.join(root, 'd%03d' % d)
        os.makedirs(path, exist_ok=True)
        for f in range(files):
            with open(os.path.join(path, 'f%05d' % f), 'wb') as handle:
                handle.write(_block(b'%d/%d' % (d, f), size))


def manifest(root):
    """{relpath: (size, sha256)} of every regular file: what every tool must produce."""
    result = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            digest = hashlib.sha256()
            with open(path, 'rb') as handle:
                for chunk in iter(lambda: handle.read(MIB), b''):
                    digest.update(chunk)
            result[os.path.relpath(path, root)] = (os.path.getsize(path), digest.hexdigest())
    return result


# -- tools ----------------------------------------------------------------------


def ours_core(src, dest, state, python, extra=None, env=None):
    params = {'src': src, 'dest': dest, 'state_dir': state}
    params.update(extra or {})
    return [python, CLI, json.dumps(params)], env


def ours_ansible(src, dest, state, python, extra=None, env=None):
    playbook = os.path.join(REPO, 'playbooks', 'migrate.yml')
    binary = os.path.join(os.path.dirname(python), 'ansible-playbook')
    cmd = [binary, playbook, '-e', 'migrate_src=' + src, '-e', 'migrate_dest=' + dest,
           '-e', 'migrate_state_dir=' + state, '-e', 'migrate_report_dir=' + state + '-reports',
           '-e', 'migrate_async=false']
    environ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                   ANSIBLE_PYTHON_INTERPRETER=python)
    environ.update(env or {})
    return cmd, environ


def peer(name, src, dest):
    if name == 'cp+sync+rm':
        return ['sh', '-c', 'cp -a "$0"/. "$1"/ && sync && rm -rf "$0"/* ', src, dest]
    if name == 'rsync':
        return ['rsync', '-a', '--remove-source-files', src + '/', dest + '/']
    if name == 'rsync --fsync':
        return ['rsync', '-a', '--fsync', '--remove-source-files', src + '/', dest + '/']
    if name == 'mv':
        # into an existing destination tree: every file is moved by name, as ours does
        return ['sh', '-c', 'cd "$0" && for d in *; do '
                'if [ -d "$d" ]; then mkdir -p "$1/$d" && '
                'find "$d" -mindepth 1 -maxdepth 1 -exec mv -t "$1/$d" {} +; '
                'else mv -t "$1" "$d"; fi; done', src, dest]
    raise ValueError(name)


def timed(cmd, env=None):
    """(seconds, peak RSS in MiB, CompletedProcess) of one command."""
    read_fd, write_fd = os.pipe()
    wrapper = [TIME, '-f', '%e %M', '-o', '/dev/fd/%d' % write_fd] if TIME else []
    started = time.monotonic()
    proc = subprocess.run(wrapper + cmd, env=env, capture_output=True, text=True, pass_fds=(write_fd,),
                          check=False) if wrapper else subprocess.run(cmd, env=env, capture_output=True,
                                                                      text=True, check=False)
    elapsed = time.monotonic() - started
    os.close(write_fd)
    with os.fdopen(read_fd) as handle:
        timing = handle.read().split()
    rss = int(timing[-1]) / 1024 if timing else float('nan')
    return elapsed, rss, proc


# -- one comparison ---------------------------------------------------------------------


class Comparison:
    def __init__(self, args, mounts, title, unit, tools, prepare, count, total_bytes, same_fs=False):
        self.args, self.mounts, self.title, self.unit = args, mounts, title, unit
        self.tools, self.prepare, self.count, self.total_bytes = tools, prepare, count, total_bytes
        self.same_fs = same_fs
        self.samples = {tool: [] for tool in tools}
        self.rss = {tool: [] for tool in tools}

    def paths(self):
        src = os.path.join(self.mounts.src, 'work', 'src')
        dest_root = self.mounts.src if self.same_fs else self.mounts.dest
        return src, os.path.join(dest_root, 'work', 'dest'), os.path.join(self.mounts.work, 'state')

    def reset(self):
        src, dest, state = self.paths()
        for path in (src, dest, state, state + '-reports'):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(src), exist_ok=True)
        os.makedirs(dest, exist_ok=True)
        self.prepare(src)
        if self.same_fs or 'mv' in self.tools:
            for entry in os.listdir(src):      # mv and ours move into an existing tree
                if os.path.isdir(os.path.join(src, entry)):
                    os.makedirs(os.path.join(dest, entry), exist_ok=True)
        return src, dest, state

    def run(self):
        expected = None
        for run in range(self.args.runs):
            # Each round starts with the next tool: none always runs right after
            # the same one (whose leftovers, e.g. a filesystem's background work,
            # would otherwise always fall on it).
            for tool in self.tools[run % len(self.tools):] + self.tools[:run % len(self.tools)]:
                src, dest, state = self.reset()
                if expected is None:
                    expected = manifest(src)
                drop_caches(self.args.settle)
                if tool.startswith('ours'):
                    build = ours_ansible if tool == 'ours (ansible)' else ours_core
                    cmd, env = build(src, dest, state, self.args.python)
                else:
                    cmd, env = peer(tool, src, dest), None
                elapsed, rss, proc = timed(cmd, env)
                if proc.returncode != 0:
                    raise SystemExit('%s failed (rc %d):\n%s\n%s'
                                     % (tool, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
                got = manifest(dest)
                left = list(manifest(src))
                if got != expected or left:
                    right = sum(1 for k, v in got.items() if expected.get(k) == v)
                    raise SystemExit('%s produced a different destination tree (%d of %d files right, '
                                     '%d left at the source)' % (tool, right, len(expected), len(left)))
                self.samples[tool].append(elapsed)
                self.rss[tool].append(rss)
                print('  %-28s run %d: %8.2f s  %7.1f MiB RSS' % (tool, run + 1, elapsed, rss), flush=True)
        self.reset()
        return self

    def paired_ratio(self, tool, peer):
        """The median over rounds of tool's time / peer's time in the same round."""
        return statistics.median([a / b for a, b in zip(self.samples[tool], self.samples[peer])])

    def rows(self):
        """One row per tool. Our ratio to a peer is the median of the ratios of the
        runs made in the same round: on a shared machine whose disk speed drifts
        from minute to minute, runs of one round compare under the same conditions."""
        ours = [t for t in self.tools if t.startswith('ours')]
        rows = []
        for tool in self.tools:
            median = statistics.median(self.samples[tool])
            rate = (self.total_bytes / median / 1e6) if self.unit == 'MB/s' else self.count / median
            ratios = []
            if tool.startswith('ours'):
                ratios = ['%.2fx %s' % (self.paired_ratio(tool, p), p) for p in self.tools if p not in ours]
            runs = ' '.join('%.2f' % v for v in self.samples[tool])
            rows.append((tool, median, runs, rate, max(self.rss[tool]), ', '.join(ratios)))
        return rows


def print_table(comparison, out):
    out.append('\n### %s\n' % comparison.title)
    out.append('| tool | median s | runs, s | %s | peak RSS MiB | ours / peer (median of rounds) |'
               % comparison.unit)
    out.append('|---|---:|---|---:|---:|---|')
    for tool, median, runs, rate, rss, ratios in comparison.rows():
        out.append('| %s | %.2f | %s | %.0f | %.0f | %s |' % (tool, median, runs, rate, rss, ratios))
    print('\n'.join(out[-(len(comparison.tools) + 3):]), flush=True)


# -- physical limits --------------------------------------------------------------------


def limits(args, mounts, out):
    size = args.big_size * MIB
    path = os.path.join(mounts.src, 'limits.bin')
    make_big(os.path.dirname(path), min(size, 512 * MIB))
    os.rename(os.path.join(os.path.dirname(path), 'big.bin'), path)
    drop_caches(args.settle)
    started = time.monotonic()
    with open(path, 'rb', buffering=0) as handle:
        buf = bytearray(16 * MIB)
        total = 0
        while True:
            got = handle.readinto(buf)
            if not got:
                break
            total += got
    read_bw = total / (time.monotonic() - started) / 1e6
    os.unlink(path)
    target = os.path.join(mounts.dest, 'limits.bin')
    block = os.urandom(min(16 * MIB, total))
    started = time.monotonic()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _block_index in range(total // len(block)):
        os.write(fd, block)
    os.fdatasync(fd)
    os.close(fd)
    write_bw = (total // len(block)) * len(block) / (time.monotonic() - started) / 1e6
    os.unlink(target)
    latencies = []
    data = os.urandom(4096)
    for i in range(200):
        name = os.path.join(mounts.dest, 'f%d' % i)
        started = time.monotonic()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        latencies.append(time.monotonic() - started)
        os.unlink(name)
    speeds = {}
    sample = os.urandom(64 * MIB)
    code = ('import time,sys,hashlib\nb=open(sys.argv[1],"rb").read()\n'
            'try:\n import blake3\nexcept ImportError:\n blake3=None\n'
            'for n in ("blake3","sha256"):\n'
            ' if n=="blake3" and blake3 is None: print(n,0); continue\n'
            ' h=blake3.blake3(max_threads=blake3.blake3.AUTO) if n=="blake3" else hashlib.sha256()\n'
            ' t=time.monotonic(); [h.update(b) for _ in range(4)]; print(n, 4*len(b)/(time.monotonic()-t)/1e6)\n')
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(sample)
        handle.flush()
        for line in sh([args.python, '-c', code, handle.name]).stdout.splitlines():
            name, value = line.split()
            speeds[name] = float(value)
    out.append('\n### Physical limits measured on the same filesystems\n')
    out.append('| measure | value |')
    out.append('|---|---:|')
    out.append('| sequential read, source ext4 (cold) | %.0f MB/s |' % read_bw)
    out.append('| sequential write + fdatasync, destination xfs | %.0f MB/s |' % write_bw)
    out.append('| create + write 4 KiB + fsync, destination xfs (median) | %.2f ms |'
               % (1000 * statistics.median(latencies)))
    out.append('| BLAKE3 (in memory, all cores) | %.0f MB/s |' % speeds.get('blake3', 0))
    out.append('| SHA-256 (in memory) | %.0f MB/s |' % speeds.get('sha256', 0))
    print('\n'.join(out[-8:]), flush=True)


# -- scale: a million files -----------------------------------------------------------------


def scale(args, mounts, out):
    """Peak RSS over a whole scan+move of many small files, and resume after a kill at 99 %."""
    count = args.scale_files
    src = os.path.join(mounts.src, 'scale', 'src')
    dest = os.path.join(mounts.src, 'scale', 'dest')
    state = os.path.join(mounts.work, 'scale-state')
    started = time.monotonic()
    per_dir = 1000
    for d in range((count + per_dir - 1) // per_dir):
        path = os.path.join(src, 'd%04d' % d)
        os.makedirs(path)
        for f in range(min(per_dir, count - d * per_dir)):
            with open(os.path.join(path, 'f%04d' % f), 'wb') as handle:
                if f % 10 == 0:
                    handle.write(b'x' * (f % 700))
    print('  generated %d files in %.0f s' % (count, time.monotonic() - started), flush=True)
    batches = (count + 255) // 256
    kill_at = max(1, int(batches * 0.99))
    env = dict(os.environ, DURABLE_MOVER_FAULTS='kill=after_journal_done@%d' % kill_at)
    audit = os.path.join(mounts.work, 'scale-audit.jsonl')
    # One process: the target is the module process's memory (each worker
    # process would be another of about the same size), and a kill at 99 % of
    # the batches is counted in one process.
    params = {'src': src, 'dest': dest, 'state_dir': state, 'audit_log': audit, 'processes': 1}
    drop_caches(args.settle)
    elapsed, rss_first, proc = timed([args.python, CLI, json.dumps(params)], env)
    killed = proc.returncode in (-9, 137) or 'Killed' in proc.stderr or proc.returncode != 0
    if os.path.exists(audit):
        os.unlink(audit)
    drop_caches(args.settle)
    resume_start = time.time()
    elapsed2, rss_second, proc2 = timed([args.python, CLI, json.dumps(params)])
    first_move = None
    with open(audit) as handle:
        for line in handle:
            event = json.loads(line)
            if event['event'] == 'file_moved':
                first_move = event['ts'] - resume_start
                break
    result = json.loads(proc2.stdout.splitlines()[-1])
    moved_left = sum(1 for _entry in os.scandir(src))  # dirs left (removed when empty)
    out.append('\n### Scale: %d small files on one filesystem\n' % count)
    out.append('| measure | value |')
    out.append('|---|---:|')
    out.append('| run killed at 99 %% of batches (batch %d of %d): wall time | %.0f s (killed: %s) |'
               % (kill_at, batches, elapsed, killed))
    out.append('| peak RSS of the killed run (scan + move) | %.0f MiB |' % rss_first)
    out.append('| resume: time from start to the first file moved | %.2f s |' % (first_move or -1))
    out.append('| resume: wall time to finish, files moved | %.1f s, %d |'
               % (elapsed2, result.get('stats', {}).get('files_moved', -1)))
    out.append('| peak RSS of the resumed run | %.0f MiB |' % rss_second)
    out.append('| complete after resume | %s (source dirs left: %d) |' % (result.get('complete'), moved_left))
    print('\n'.join(out[-9:]), flush=True)
    shutil.rmtree(os.path.join(mounts.src, 'scale'), ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)


def ansible_overhead(args, mounts, out):
    """Through ansible-playbook on localhost vs the core directly, on a small tree."""
    results = {}
    for tool in ('ours (core)', 'ours (ansible)') * args.runs:
        src = os.path.join(mounts.src, 'ovh', 'src')
        dest = os.path.join(mounts.dest, 'ovh', 'dest')
        state = os.path.join(mounts.work, 'ovh-state')
        for path in (src, dest, state, state + '-reports'):
            shutil.rmtree(path, ignore_errors=True)
        make_small(src, 2, 50, 4096)
        build = ours_ansible if tool == 'ours (ansible)' else ours_core
        cmd, env = build(src, dest, state, args.python)
        elapsed, _rss, proc = timed(cmd, env)
        if proc.returncode != 0:
            raise SystemExit('%s failed: %s %s' % (tool, proc.stdout[-2000:], proc.stderr[-2000:]))
        results.setdefault(tool, []).append(elapsed)
    core = statistics.median(results['ours (core)'])
    playbook = statistics.median(results['ours (ansible)'])
    out.append('\n### Ansible overhead (100 files, localhost)\n')
    out.append('| path | median s |')
    out.append('|---|---:|')
    out.append('| core directly | %.2f |' % core)
    out.append('| ansible-playbook playbooks/migrate.yml | %.2f |' % playbook)
    out.append('| overhead | %.2f s |' % (playbook - core))
    print('\n'.join(out[-6:]), flush=True)


def environment(args):
    versions = {}
    for tool, flag in (('rsync', '--version'), ('cp', '--version'), ('mv', '--version')):
        first = sh([tool, flag], check=False).stdout.splitlines()
        versions[tool] = first[0] if first else '?'
    core = sh([args.python, '-c', 'import ansible; print(ansible.__version__)'], check=False).stdout.strip()
    blake3 = sh([args.python, '-c', 'import blake3; print(blake3.__version__)'], check=False).stdout.strip()
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return ['', '- date: %s' % time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            '- kernel: %s, %d CPUs, %.0f GiB RAM' % (platform.release(), os.cpu_count(), memory),
            '- python: %s; ansible-core %s; blake3 %s' % (platform.python_version(), core or '-', blake3 or '-'),
            '- peers: %s; %s; %s' % (versions['rsync'], versions['cp'], versions['mv']),
            '- filesystems: source ext4, destination xfs, each on a loop device over a sparse image file',
            '- runs per tool: %d, alternated (each round starts with the next tool), page cache dropped '
            '(+%g s settle) before each' % (args.runs, args.settle)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', default='limits,big,small,samefs,ansible,scale')
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--settle', type=float, default=5.0)
    parser.add_argument('--big-size', type=int, default=2048, help='MiB')
    parser.add_argument('--small-dirs', type=int, default=100)
    parser.add_argument('--small-files', type=int, default=200, help='per directory')
    parser.add_argument('--scale-files', type=int, default=1000000)
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--python', default=os.path.join(REPO, '.venv', 'bin', 'python')
                        if os.path.exists(os.path.join(REPO, '.venv', 'bin', 'python')) else sys.executable)
    parser.add_argument('--output', default=None, help='also write the markdown report here')
    parser.add_argument('--quick', action='store_true', help='tiny sizes, one run: a smoke test')
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.settle, args.big_size = 1, 0.0, 8
        args.small_dirs, args.small_files, args.scale_files = 3, 20, 3000
    if os.geteuid() != 0:
        raise SystemExit('bench.py needs root: it mounts loop filesystems and drops the page cache')
    only = set(args.only.split(','))
    big = args.big_size * MIB
    work = tempfile.mkdtemp(prefix='dm-bench-', dir=args.workdir)
    mounts = Mounts(work, src_mb=max(3 * args.big_size + 1024, 2048), dest_mb=max(2 * args.big_size + 1024, 2048),
                    inodes=max(2 * args.scale_files, 200000))
    out = ['# durable.mover benchmarks'] + environment(args)
    print('\n'.join(out), flush=True)
    try:
        if 'limits' in only:
            limits(args, mounts, out)
        if 'big' in only:
            print('\n== one %d MiB file across devices' % args.big_size, flush=True)
            comparison = Comparison(args, mounts, 'One %d MiB file, ext4 -> xfs (BLAKE3, read-back on)'
                                    % args.big_size, 'MB/s',
                                    ['ours (core)', 'cp+sync+rm', 'rsync', 'rsync --fsync', 'mv'],
                                    lambda src: make_big(src, big), 1, big).run()
            print_table(comparison, out)
        files = args.small_dirs * args.small_files
        if 'small' in only:
            print('\n== %d files of 4 KiB across devices' % files, flush=True)
            comparison = Comparison(args, mounts, '%d files of 4 KiB in %d dirs, ext4 -> xfs, fully durable'
                                    % (files, args.small_dirs), 'files/s',
                                    ['ours (core)', 'rsync', 'rsync --fsync', 'cp+sync+rm', 'mv'],
                                    lambda src: make_small(src, args.small_dirs, args.small_files, 4096),
                                    files, files * 4096).run()
            print_table(comparison, out)
        if 'samefs' in only:
            print('\n== %d files of 4 KiB on one filesystem' % files, flush=True)
            comparison = Comparison(args, mounts, '%d files of 4 KiB on one ext4 (rename path), into an '
                                    'existing tree' % files, 'files/s', ['ours (core)', 'mv'],
                                    lambda src: make_small(src, args.small_dirs, args.small_files, 4096),
                                    files, files * 4096, same_fs=True).run()
            print_table(comparison, out)
        if 'ansible' in only:
            ansible_overhead(args, mounts, out)
        if 'scale' in only:
            print('\n== scale: %d files' % args.scale_files, flush=True)
            scale(args, mounts, out)
    finally:
        mounts.close()
        shutil.rmtree(work, ignore_errors=True)
    report = '\n'.join(out) + '\n'
    if args.output:
        with open(args.output, 'w') as handle:
            handle.write(report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
