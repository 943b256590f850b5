# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Mount powerfs instances, cut their power, tear them down: the crash suite's rig.

Typical use in a test (the fixture skips, with the reason, where powerfs
cannot run: not root, no /dev/fuse, no mfusepy or libfuse3)::

    import powerfs_harness
    powerfs_rig = powerfs_harness.powerfs_rig     # the fixture, by its name

    def test_x(powerfs_rig):
        rig = powerfs_rig('src', 'dest', 'state')  # three mounts: three st_dev
        build_tree(rig['src'])
        rig.sync_all()                # setup is durable
        rig.save_all('base')          # a "disk image" of every mount
        for point in points:
            rig.restore_all('base')   # back to the image, no remount (~1 ms)
            run_the_mover_killed_at(point)   # kill it (and reap it) first...
            rig.cut_all()             # ...then the power goes
            check_invariant(...)

Outside pytest, ``with PowerRig(base_dir, ['src', 'dest']) as rig: ...`` does
the same (as root; it enters the private mount namespace by itself).

Mount namespace: the first mount calls :func:`enter_private_mount_namespace`,
which does what ``unshare --mount --propagation private`` does, to the test
process itself: ``unshare(CLONE_NEWNS)`` and ``mount --make-rprivate /``.
From then on this process and every child it starts (the powerfs daemons, the
mover, strace) share one private mount namespace: the mounts are visible to all
of them under their ordinary paths, never to the rest of the machine, and they
disappear with the namespace when the process exits, however it exits. The
daemons also get ``PR_SET_PDEATHSIG`` so they never outlive the test process.
This is simpler than re-executing pytest under unshare(1) (which would have to
replay pytest's command line and output) and than a helper process whose
mounts are reached through /proc/PID/root (a magic link that realpath() cannot
follow, which would break the mover's own path checks). Only the calling thread
changes namespace (pytest runs tests in its main thread).

Timings (``python tests/crash/powerfs_harness.py bench``, the 2-core VM, under
load): two mounts started in parallel 50-160 ms (a fresh Python per daemon,
then the kernel's INIT), unmount of both 12-40 ms, so a full cycle of mount 2 +
small workload (5 files written, fdatasync'd, renamed, directory fsync'd) +
cut + unmount 65-200 ms; the same with ``restore_all`` instead of mount and
unmount ~2 ms. The mover's own run (a new Python process) costs 75-150 ms per
crash point, so: mount once per test and ``restore_all`` before every point.
The control socket is one connection per mount: one thread at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
POWERFS = HERE / 'powerfs.py'
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
APT_PACKAGES = ('fuse3', 'libfuse3-3')
LIBFUSE3 = 'libfuse3.so.3'     # mfusepy would prefer libfuse 2 if both were installed

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_private_ns_pid: int | None = None


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------

def powerfs_unavailable() -> str | None:
    """Why powerfs cannot be mounted here (None if it can)."""
    if os.geteuid() != 0:
        return 'powerfs needs root (mount namespaces, allow_other); running as uid %d' % os.geteuid()
    if not os.path.exists('/dev/fuse'):
        return 'powerfs needs /dev/fuse (a container without FUSE?)'
    if shutil.which('fusermount3') is None:
        return 'powerfs needs fusermount3 (apt-get install %s)' % ' '.join(APT_PACKAGES)
    probe = subprocess.run(
        [sys.executable, '-c', 'import mfusepy; print(mfusepy.fuse_version_major)'],
        capture_output=True, text=True, check=False, env=dict(os.environ, FUSE_LIBRARY_PATH=LIBFUSE3))
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ['?'])[-1]
        return ('powerfs needs mfusepy over libfuse3 (pip install mfusepy; apt-get install %s): %s'
                % (' '.join(APT_PACKAGES), last))
    if probe.stdout.strip() != '3':
        return 'mfusepy loaded libfuse %s, powerfs is written for libfuse 3' % probe.stdout.strip()
    return None


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, '%s: %s' % (what, os.strerror(code)))


def enter_private_mount_namespace() -> None:
    """Move this process into its own mount namespace with private propagation.

    The same as running under ``unshare --mount --propagation private``; done
    once per process (children inherit it). Needs root.
    """
    global _private_ns_pid  # pylint: disable=global-statement
    if _private_ns_pid is not None:
        return              # this process, or the parent it was forked from
    _check(_libc.unshare(CLONE_NEWNS), 'unshare(CLONE_NEWNS)')
    _check(_libc.mount(b'none', b'/', None, MS_REC | MS_PRIVATE, None), 'mount --make-rprivate /')
    _private_ns_pid = os.getpid()


def is_mountpoint(path: os.PathLike | str) -> bool:
    """True if ``path`` is a mount point in this process's mount namespace."""
    target = os.path.realpath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        return any(line.split()[4].encode().decode('unicode_escape') == target for line in handle)


def _set_pdeathsig() -> None:
    """In the daemon, before exec: die with the process that started it."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# --------------------------------------------------------------------------
# One mount
# --------------------------------------------------------------------------

class PowerMount:
    """One powerfs instance: its daemon, mount point and control socket."""

    def __init__(self, mountpoint: Path, name: str = 'powerfs', direct_io: bool = False,
                 debug: bool = False, timeout: float = 15.0, wait: bool = True):
        """Start the daemon; with ``wait`` (default) return once it is mounted.

        ``wait=False`` returns at once: call :meth:`wait_ready` before use (how
        :class:`PowerRig` starts its daemons in parallel).
        """
        enter_private_mount_namespace()
        self.name = name
        self.mountpoint = Path(mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        run_dir = Path(tempfile.mkdtemp(prefix='powerfs-%s-' % name))
        self.run_dir = run_dir
        self.socket_path = run_dir / 'control.sock'
        self.log_path = run_dir / 'powerfs.log'
        self.st_dev: int | None = None
        self._sock: socket.socket | None = None
        self._stream: t.Any = None
        ready_r, ready_w = os.pipe()
        self._ready_r: int | None = ready_r
        cmd = [sys.executable, str(POWERFS), str(self.mountpoint), '--control', str(self.socket_path),
               '--ready-fd', str(ready_w), '--log', str(self.log_path), '--fsname', 'powerfs-' + name]
        if direct_io:
            cmd.append('--direct-io')
        if debug:
            cmd.append('--debug')
        try:
            with open(self.log_path, 'ab') as log:
                # pylint: disable-next=consider-using-with,subprocess-popen-preexec-fn
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,),
                    preexec_fn=_set_pdeathsig,
                    env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1', FUSE_LIBRARY_PATH=LIBFUSE3))
        finally:
            os.close(ready_w)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the daemon has mounted and its control socket answers."""
        if self._stream is not None:
            return
        try:
            self._wait_ready(self._ready_r, self.timeout)
        except BaseException:
            self.unmount()
            raise
        finally:
            self._close_ready()
        self.st_dev = os.stat(self.mountpoint).st_dev

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __fspath__(self) -> str:
        return str(self.mountpoint)

    def __repr__(self) -> str:
        return '<PowerMount %s at %s pid %d>' % (self.name, self.mountpoint, self.pid)

    def _wait_ready(self, ready_r: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            readable, _w, _x = select.select([ready_r], [], [], max(0.0, left))
            if readable and os.read(ready_r, 64).startswith(b'ready'):
                break
            if self.proc.poll() is not None or left <= 0:
                raise RuntimeError('powerfs %s did not mount on %s (%s); its log:\n%s'
                                   % (self.name, self.mountpoint,
                                      'exit status %s' % self.proc.returncode
                                      if self.proc.returncode is not None else 'timed out',
                                      self.log_text()))
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(self.socket_path))
        self._stream = self._sock.makefile('rwb')

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors='replace')[-4000:]
        except OSError:
            return '(no log)'

    # control commands -------------------------------------------------

    def command(self, line: str) -> dict:
        """Send one control command; return the reply, raise if it failed."""
        if self._stream is None:
            raise RuntimeError('powerfs %s is not mounted' % self.name)
        self._stream.write(line.encode() + b'\n')
        self._stream.flush()
        raw = self._stream.readline()
        if not raw:
            raise RuntimeError('powerfs %s closed its control socket (died?); log:\n%s'
                               % (self.name, self.log_text()))
        reply = json.loads(raw)
        if not reply.pop('ok', False):
            raise RuntimeError('powerfs %s: %s: %s' % (self.name, line, reply.get('error')))
        return reply

    def cut(self) -> dict:
        """Power cut: the visible state becomes the durable state; handles go stale."""
        return self.command('cut')

    def sync_all(self) -> dict:
        """Make everything visible durable (for setup, never in a test of durability)."""
        return self.command('sync-all')

    def save(self, name: str) -> dict:
        """Snapshot the durable state under ``name`` (sync_all first to save what you see)."""
        return self.command('save ' + name)

    def restore(self, name: str) -> dict:
        """Durable and visible state := snapshot ``name``; handles go stale."""
        return self.command('restore ' + name)

    def reset(self) -> dict:
        """An empty filesystem, durable; handles go stale."""
        return self.command('reset')

    def stats(self) -> dict:
        return self.command('stats')

    def dirty(self) -> dict:
        """What a cut would drop now: {'data': [...], 'metadata': [...], 'dir_entries': [...]}."""
        return self.command('dirty')

    def log_on(self) -> None:
        self.command('log-on')

    def log_off(self) -> None:
        self.command('log-off')

    def oplog(self) -> list:
        """The mutating/syncing requests received since log_on or the last oplog()."""
        return self.command('log')['log']

    def errors(self) -> list:
        """powerfs's internal errors (bugs in powerfs, not in the code under test)."""
        return self.command('errors')['errors']

    # teardown -----------------------------------------------------------

    def unmount(self, attempts: int = 6) -> None:
        """Unmount (retrying on EBUSY), lazily as a last resort; end the daemon by PID."""
        self.detach(attempts)
        self.end_daemon()

    def detach(self, attempts: int = 6) -> None:
        """Close the control connection and unmount; the daemon then exits by itself."""
        if self._stream is not None:
            try:
                self._stream.close()
                self._sock.close()
            except OSError:
                pass
            self._stream = self._sock = None
        mountpoint = str(self.mountpoint)
        delay = 0.02
        for attempt in range(attempts):
            if not is_mountpoint(mountpoint):
                return
            if attempt % 2 == 0:        # umount2(2) directly: we are root, and it is fast
                if _libc.umount2(mountpoint.encode(), 0) == 0:
                    return
            elif subprocess.run(['fusermount3', '-u', '-q', mountpoint], capture_output=True,
                                check=False).returncode == 0:
                return
            time.sleep(delay)
            delay *= 2
        if is_mountpoint(mountpoint):
            _libc.umount2(mountpoint.encode(), MNT_DETACH)      # umount -l
            # Busy: the lazily detached mount lives on while files are open
            # on it, and so does the daemon. Abort the connection: the daemon
            # exits, and those files get ENOTCONN.
            self._abort_connection()

    def _abort_connection(self) -> None:
        if self.st_dev is None:
            return
        connections = '/sys/fs/fuse/connections'
        abort = os.path.join(connections, str(os.minor(self.st_dev)), 'abort')
        if not os.path.exists(abort) and os.path.isdir(connections):
            # fusectl, in our private mount namespace only
            _libc.mount(b'fusectl', connections.encode(), b'fusectl', 0, None)
        try:
            with open(abort, 'w', encoding='ascii') as handle:
                handle.write('1')
        except OSError:
            pass        # the daemon is then ended by signal

    def _close_ready(self) -> None:
        if self._ready_r is not None:
            os.close(self._ready_r)
            self._ready_r = None

    def end_daemon(self) -> None:
        """Reap the daemon: it leaves its loop when the kernel ends the connection at
        unmount; if it does not, SIGTERM, then SIGKILL, by PID."""
        self._close_ready()
        try:
            self._end_daemon()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _end_daemon(self) -> None:
        # The daemon leaves its loop when the kernel ends the connection at
        # unmount; give it a moment, then terminate it, then kill it, by PID.
        for sig, wait in ((None, 2.0), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            if sig is not None and self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------
# Several mounts
# --------------------------------------------------------------------------

class PowerRig:
    """N powerfs mounts under ``base_dir`` (one directory each, one st_dev each).

    ``rig['src']`` is the mount point (a Path) of the mount named 'src';
    ``rig.mounts['src']`` its :class:`PowerMount`. The ``*_all`` methods act on
    every mount, in the order given.
    """

    def __init__(self, base_dir: os.PathLike | str, names: t.Sequence[str] = ('src', 'dest'),
                 **mount_options: t.Any):
        if len(set(names)) != len(names) or not names:
            raise ValueError('PowerRig needs distinct names, got %r' % (names,))
        self.base_dir = Path(base_dir)
        self.mounts: dict[str, PowerMount] = {}
        try:
            for name in names:      # start every daemon, then wait: they mount in parallel
                self.mounts[name] = PowerMount(self.base_dir / name, name=name, wait=False,
                                               **mount_options)
            for mount in self:
                mount.wait_ready()
        except BaseException:
            self.close(check=False)
            raise

    def __getitem__(self, name: str) -> Path:
        return self.mounts[name].mountpoint

    def __iter__(self) -> t.Iterator[PowerMount]:
        return iter(self.mounts.values())

    def __enter__(self) -> PowerRig:
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close(check=exc_info[0] is None)

    def cut_all(self) -> dict:
        """Cut the power of every mount at once (kill and reap the code under test first)."""
        return {name: mount.cut() for name, mount in self.mounts.items()}

    def sync_all(self) -> None:
        for mount in self:
            mount.sync_all()

    def save_all(self, name: str) -> None:
        for mount in self:
            mount.save(name)

    def restore_all(self, name: str) -> None:
        for mount in self:
            mount.restore(name)

    def reset_all(self) -> None:
        for mount in self:
            mount.reset()

    def dirty(self) -> dict:
        return {name: mount.dirty() for name, mount in self.mounts.items()}

    def run_then_cut(self, func: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> tuple:
        """Run ``func(*args, **kwargs)``, then cut every mount, even if it raised.

        Returns ``(result, cut_reports)``; an exception from ``func`` propagates
        after the cut. ``func`` must not leave a process running that still
        writes to the mounts (a real power cut stops everything).
        """
        try:
            result = func(*args, **kwargs)
        finally:
            reports = self.cut_all()
        return result, reports

    def close(self, check: bool = True) -> None:
        """Unmount everything; with ``check``, fail if powerfs hit an internal error."""
        problems = []
        for name, mount in list(self.mounts.items()):
            if check:
                try:
                    errors = mount.errors()
                except (OSError, RuntimeError) as exc:
                    errors = ['control socket: %s' % exc]
                if errors:
                    problems.append('%s: %s' % (name, '\n'.join(errors)))
            mount.detach()
        for name, mount in list(self.mounts.items()):   # the daemons exit in parallel
            mount.end_daemon()
            del self.mounts[name]
        if problems:
            raise AssertionError('powerfs internal errors:\n' + '\n'.join(problems))


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------

try:
    import pytest
except ImportError:        # the harness also runs without pytest (bench)
    pytest = None           # type: ignore[assignment]

if pytest is not None:
    @pytest.fixture
    def powerfs_rig(tmp_path: Path) -> t.Iterator[t.Callable[..., PowerRig]]:
        """Factory: ``powerfs_rig('src', 'dest', ..., public=False, direct_io=False)`` -> PowerRig.

        Mounts under ``tmp_path/powerfs/<n>/<name>``, or with ``public=True``
        under a fresh world-traversable directory in $TMPDIR (pytest's
        tmp_path is private to root, so commands run as nobody could not
        reach the mounts). Everything is unmounted at teardown, which also
        fails the test if powerfs hit an internal error. Skips where powerfs
        cannot run (see :func:`powerfs_unavailable`).
        """
        reason = powerfs_unavailable()
        if reason:
            pytest.skip(reason)
        rigs: list[PowerRig] = []
        public_dirs: list[str] = []

        def make(*names: str, public: bool = False, **mount_options: t.Any) -> PowerRig:
            if public:
                base = tempfile.mkdtemp(prefix='powerfs-public-')
                public_dirs.append(base)
                os.chmod(base, 0o755)
            else:
                base = str(tmp_path / 'powerfs' / str(len(rigs)))
            rig = PowerRig(base, names or ('src', 'dest'), **mount_options)
            rigs.append(rig)
            return rig

        try:
            yield make
        finally:
            try:
                for rig in reversed(rigs):
                    rig.close()
            finally:
                for base in public_dirs:
                    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def small_workload(root: Path, files: int = 5) -> None:
    """A mover-like step: write, fsync, rename into place, fsync the directory."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(files):
            part = root / ('.f%d.part' % index)
            with open(part, 'wb') as handle:
                handle.write(os.urandom(16384))
                handle.flush()
                os.fdatasync(handle.fileno())
            os.rename(part, root / ('f%d' % index))
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def bench(rounds: int = 10, base_dir: str | None = None) -> dict:
    """Milliseconds per cycle: full (mount 2 + workload + cut + unmount) vs restore."""
    enter_private_mount_namespace()
    base = Path(base_dir or tempfile.mkdtemp(prefix='powerfs-bench-'))
    full, mount_ms, unmount_ms = [], [], []
    for index in range(rounds):
        start = time.perf_counter()
        rig = PowerRig(base / ('full%d' % index), ('src', 'dest'))
        mounted = time.perf_counter()
        small_workload(rig['dest'])
        rig.cut_all()
        before_unmount = time.perf_counter()
        rig.close()
        end = time.perf_counter()
        full.append((end - start) * 1000)
        mount_ms.append((mounted - start) * 1000)
        unmount_ms.append((end - before_unmount) * 1000)
    restore = []
    with PowerRig(base / 'restore', ('src', 'dest')) as rig:
        small_workload(rig['src'])
        rig.sync_all()
        rig.save_all('base')
        for _index in range(rounds):
            start = time.perf_counter()
            rig.restore_all('base')
            small_workload(rig['dest'])
            rig.cut_all()
            restore.append((time.perf_counter() - start) * 1000)
    shutil.rmtree(base, ignore_errors=True)

    def median(values: list) -> float:
        return round(sorted(values)[len(values) // 2], 1)

    return {'rounds': rounds, 'full_cycle_ms': median(full), 'mount_2_ms': median(mount_ms),
            'unmount_2_ms': median(unmount_ms), 'restore_cycle_ms': median(restore)}


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'bench':
        why = powerfs_unavailable()
        if why:
            sys.exit(why)
        print(json.dumps(bench(int(sys.argv[2]) if len(sys.argv) > 2 else 10), indent=1))
    else:
        sys.exit('usage: powerfs_harness.py bench [ROUNDS]')
