# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fleet of real SSH test hosts on this machine, without Docker.

Each host is an ``sshd`` living in namespaces of its own:

* **network**: a named netns ``<run>-h<i>`` whose ``eth0`` is one end of a
  veth pair; the other end is a port of bridge ``br0`` in the switch netns
  ``<run>-sw``. One more veth pair joins the bridge to the namespace of the
  controller (the process running Ansible): its root-side end is named after
  the run (``dmf1a2b3c``, 9 characters) and is the only interface, address
  and route this harness adds outside its own namespaces.
* **mount**: ``/srv`` is a small private tmpfs holding ``/srv/data/src``
  (a loop-mounted ext4 image) and ``/srv/data/dest`` (a loop-mounted xfs
  image), so a move from src to dest crosses devices. Propagation is
  private: the root namespace never sees these mounts. Everything else
  (``/usr``, ``/root``, ``/tmp``...) is the machine's own filesystem, shared
  by all hosts: put per-host state under ``/srv/data``. One exception:
  root's ``~/.bashrc`` is masked (``/dev/null`` bound over it) inside
  the host, because sshd runs it for every command (Debian's bash does,
  even non-interactively): a machine's rc file that does real work (such
  as ``pyenv init``, which rehashes under a lock file in ``/root``) makes
  every Ansible task slower, and a host torn down mid-rehash would leave
  that lock behind and stall every root shell on the machine.
* **pid** and **uts**: the host has its own process tree (so ``pkill``
  inside one host never touches another) and its own hostname (its
  inventory name). Its pid 1 is a tiny reaper, the *init* process; killing
  it kills every process of the host, sessions and async jobs included.

Addresses: a /24 chosen at random in the IPv4 link-local range
169.254.0.0/16 (RFC 3927), avoiding 169.254.0.x, 169.254.255.x, 169.254.169.x
(cloud metadata) and any /24 already routed or addressed here. Link-local was
chosen over 10.x because routers never forward it, so it cannot clash with a
real private network this machine or a neighbour uses, and a stray packet can
never reach anything beyond the link. The controller gets ``.1``, host ``i``
gets ``.(10 + i)``; an ``unreachable`` route for the /24 with the worst metric
keeps packets for the run's subnet on this machine even if the controller's
veth disappears.

Host keys (ed25519, one per host) and the client key pair are generated per
run in the run directory, together with ``known_hosts``, each host's
``sshd_config`` (``UsePAM no``, ``StrictModes no``, root login by key only,
``PidFile`` and log in the run directory) and the disk images. Nothing under
``/etc`` is touched; ``/run/sshd`` (sshd's privilege-separation directory) is
created when missing, as the openssh-server service would.

Bookkeeping: every run has an id ``dmf`` + 6 hex digits that prefixes every
name it creates (netns, root-side veth, image files), a state file
``<run dir>/state.json`` and a registry entry ``/run/durable-mover-fleet/<id>.json``
naming its owner process (pid and start time; none for a fleet started by the
CLI, which lives until ``down``). :func:`cleanup_stale` tears down runs whose
owner is dead and resources carrying the prefix that no registered run owns.
Teardown kills processes by PID (checked against their start time, so a
recycled PID is never hit), detaches only the loop devices backed by the
run's images, deletes the run's namespaces and interface, and removes the
run directory. It is idempotent and works from whatever a failed bring-up
had recorded.

Library use::

    from harness import Fleet
    with Fleet.create(3) as fleet:
        inventory = fleet.inventory()          # Ansible YAML inventory
        fleet["h0"].run("df /srv/data/dest")    # in the host's namespaces
        fleet["h1"].link_down()                 # cut its network

CLI (``python tests/fleet/harness.py --help``)::

    python tests/fleet/harness.py up --hosts 3 --dir D   # D/state.json, D/inventory.yml
    python tests/fleet/harness.py down --dir D
    python tests/fleet/harness.py list | cleanup-stale [--include-detached]

Needs root, iproute2, util-linux (unshare, nsenter, losetup, mount),
openssh-server and openssh-client, e2fsprogs and xfsprogs.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import pwd
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

PREFIX = "dmf"
RUN_ID_RE = re.compile(r"^dmf[0-9a-f]{6}$")
NETNS_RE = re.compile(r"^(dmf[0-9a-f]{6})-(sw|h\d+)$")
IMAGE_RE = re.compile(r"^(dmf[0-9a-f]{6})-.+\.img$")
REGISTRY_DIR = Path("/run/durable-mover-fleet")
STATE_FILE = "state.json"
INVENTORY_FILE = "inventory.yml"
# Entries the harness makes in a run directory; a directory that existed
# before ``up`` keeps everything else.
RUN_DIR_ENTRIES = (STATE_FILE, INVENTORY_FILE, "keys", "hosts", "known_hosts", "cp")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_ENV = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}
DEFAULT_PYTHON = "/usr/bin/python3"
SRV_TMPFS_SIZE = "16m"
ROUTE_METRIC = 4000000000  # worse than any real route: used only when ours is gone
# mkfs commands and the smallest image each accepts (MiB); mkfs.xfs >= 5.19
# refuses filesystems under 300 MB. ext*: no blocks reserved for root (the
# mover runs as root: reserved blocks would make "full" mean two things).
MKFS = {
    "ext4": (["mkfs.ext4", "-F", "-q", "-m", "0"], 8),
    "ext3": (["mkfs.ext3", "-F", "-q", "-m", "0"], 8),
    "ext2": (["mkfs.ext2", "-F", "-q", "-m", "0"], 8),
    "xfs": (["mkfs.xfs", "-f", "-q"], 300),
    "btrfs": (["mkfs.btrfs", "-f", "-q"], 128),
}
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "losetup", "mount", "sshd", "ssh", "ssh-keygen")

# The host's pid 1: reaps orphans (sshd sessions, Ansible async jobs), sets
# the hostname, tells the harness it is up, then sleeps.
INIT_SCRIPT = r"""
import os, signal, socket, sys
def reap(*_):
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
socket.sethostname(sys.argv[1])
os.write(1, b"ready\n")
os.close(1)
os.open(os.devnull, os.O_WRONLY)
while True:
    signal.pause()
"""

_UNSET: t.Any = object()


class HarnessError(RuntimeError):
    """A step of bringing a fleet up or down failed; the message says which and why.

    From :meth:`Fleet.create`, ``run_id`` names the run and ``teardown`` is
    the report of the teardown that followed the failure.
    """

    run_id: str | None = None
    teardown: dict[str, t.Any] | None = None


# --------------------------------------------------------------------------
# Small process and file helpers
# --------------------------------------------------------------------------

def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH]))


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise HarnessError(f"{name} not found (install iproute2, util-linux, openssh-server, openssh-client, e2fsprogs, xfsprogs)")
    return path


def _run(argv: t.Sequence[str], *, check: bool = True, input_text: str | None = None,
         timeout: float = 60, env: t.Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with output captured; raise HarnessError with its stderr when ``check`` and it fails."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, input=input_text,
                              timeout=timeout, env=dict(env) if env is not None else None,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{shlex.join(argv)} timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _spawn(argv: t.Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr in one pipe; the caller collects it with ``communicate()``."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                            stderr=subprocess.STDOUT)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_tool("ip"), *args], check=check)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            data = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rfind(")") + 2:].split()
    # fields[0] is field 3 of proc(5): state, ppid, ..., starttime is field 22.
    return fields[0], int(fields[1]), int(fields[19])


def start_time(pid: int | None) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), or None if there is no such process."""
    if pid is None:
        return None
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``started`` is given, is the same process."""
    if pid is None:
        return False
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return started is None or stat[2] == started


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (this kernel may lack /proc/PID/task/TID/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pid:
                found.append(int(entry))
    return found


def _pids_in_ns(kind: str, pid: int) -> list[tuple[int, int | None]]:
    """(pid, start time) of every process sharing ``pid``'s namespace of ``kind`` (``mnt``, ``pid``...)."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/{kind}").st_ino == ns:
                    found.append((int(entry), start_time(int(entry))))
    return found


def _kill(pid: int | None, started: int | None, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``started``."""
    if pid is None or started is None or not pid_alive(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(procs: t.Iterable[tuple[int, int | None]], timeout: float) -> list[int]:
    """Wait until none of ``(pid, start)`` runs; return those still running at the deadline."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [(pid, started) for pid, started in pending if pid_alive(pid, started)]
        if not pending or time.monotonic() >= deadline:
            return [pid for pid, _started in pending]
        time.sleep(0.01)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _netns_list() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _netns_pids(name: str) -> list[int]:
    proc = _ip("netns", "pids", name, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _loop_devices() -> list[tuple[str, str]]:
    """(device, backing file) of every loop device on the machine."""
    proc = _run([_tool("losetup"), "--list", "--json", "--output", "NAME,BACK-FILE"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [(dev["name"], dev.get("back-file") or "") for dev in json.loads(proc.stdout).get("loopdevices", [])]


def _loops_for(image: str) -> list[str]:
    proc = _run([_tool("losetup"), "--associated", image], check=False)
    return [line.split(":", 1)[0] for line in proc.stdout.splitlines() if line.startswith("/dev/")]


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def unavailable() -> str | None:
    """Why a fleet cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return f"the test fleet needs root (running as uid {os.geteuid()})"
    missing = [name for name in REQUIRED_TOOLS if _which(name) is None]
    if missing:
        return f"the test fleet needs {', '.join(missing)} (apt-get install iproute2 util-linux openssh-server openssh-client)"
    if not os.path.exists("/dev/loop-control"):
        return "the test fleet needs loop devices (/dev/loop-control is missing)"
    for fstype in ("ext4", "xfs"):
        if _which(MKFS[fstype][0][0]) is None:
            return f"the test fleet needs {MKFS[fstype][0][0]} (apt-get install e2fsprogs xfsprogs)"
    return None


# --------------------------------------------------------------------------
# Registry of runs (owner liveness, stale cleanup)
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _registry_lock() -> t.Iterator[None]:
    """Serialise subnet choice and stale cleanup between runs on this machine."""
    REGISTRY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(REGISTRY_DIR / ".lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _registry_read() -> dict[str, dict[str, t.Any]]:
    entries: dict[str, dict[str, t.Any]] = {}
    if not REGISTRY_DIR.is_dir():
        return entries
    for path in REGISTRY_DIR.glob("dmf*.json"):
        run_id = path.stem
        if not RUN_ID_RE.match(run_id):
            continue
        try:
            entries[run_id] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries[run_id] = {"run_id": run_id}
    return entries


def _owner_alive(entry: t.Mapping[str, t.Any]) -> bool | None:
    """True/False for an owned run; None for a detached one (no owner: lives until ``down``)."""
    if entry.get("owner_pid") is None:
        return None
    return pid_alive(entry["owner_pid"], entry.get("owner_start"))


# --------------------------------------------------------------------------
# Hosts
# --------------------------------------------------------------------------

class Host:
    """One test host: an sshd in its own network, mount, pid and uts namespaces."""

    def __init__(self, fleet: Fleet, index: int, name: str, addr: str) -> None:
        self.fleet = fleet
        self.index = index
        self.name = name
        self.addr = addr
        self.netns = f"{fleet.run_id}-h{index}"
        self.switch_port = f"h{index}"
        self.dir = fleet.run_dir / "hosts" / name
        self.src_image = self.dir / f"{fleet.run_id}-{name}-src.img"
        self.dest_image = self.dir / f"{fleet.run_id}-{name}-dest.img"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.sshd_config = self.dir / "sshd_config"
        # Processes, as (pid, start time) seen from the root pid namespace.
        self.holder_pid: int | None = None   # unshare: parent of init, outside the host's pid ns
        self.holder_start: int | None = None
        self.init_pid: int | None = None     # pid 1 of the host
        self.init_start: int | None = None
        self.sshd_pid: int | None = None     # the listening sshd
        self.sshd_start: int | None = None
        self.sshd_parent_pid: int | None = None  # nsenter that started it, outside the host's pid ns
        self.sshd_parent_start: int | None = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} netns={self.netns} init={self.init_pid}>"

    # -- state -----------------------------------------------------------

    def to_dict(self) -> dict[str, t.Any]:
        keys = ("index", "name", "addr", "netns", "holder_pid", "holder_start", "init_pid", "init_start",
                "sshd_pid", "sshd_start", "sshd_parent_pid", "sshd_parent_start")
        data = {key: getattr(self, key) for key in keys}
        data.update(src_image=str(self.src_image), dest_image=str(self.dest_image))
        return data

    @classmethod
    def from_dict(cls, fleet: Fleet, data: t.Mapping[str, t.Any]) -> Host:
        host = cls(fleet, data["index"], data["name"], data["addr"])
        for key in ("holder_pid", "holder_start", "init_pid", "init_start", "sshd_pid", "sshd_start",
                    "sshd_parent_pid", "sshd_parent_start"):
            setattr(host, key, data.get(key))
        return host

    # -- running things on the host -----------------------------------------

    def nsenter_argv(self, *, pid_ns: bool = True) -> list[str]:
        """``nsenter`` prefix that enters this host's mount, uts, net (and pid) namespaces."""
        if self.init_pid is None:
            raise HarnessError(f"host {self.name} has no init process")
        argv = [_tool("nsenter"), "-t", str(self.init_pid), "-m", "-u", "-n"]
        if pid_ns:
            argv.append("-p")
        return [*argv, "--"]

    def run(self, cmd: str | t.Sequence[str], *, check: bool = False, input: str | None = None,  # pylint: disable=redefined-builtin
            timeout: float = 120, env: t.Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (a shell string or an argv list) inside the host, as root, not over SSH.

        Returns the CompletedProcess (text, output captured). ``check=True``
        raises HarnessError on a non-zero exit. The environment is a clean
        login-like one (system PATH, HOME=/root) plus ``env``.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = [*self.nsenter_argv(), *argv]
        proc = subprocess.run(full, capture_output=True, text=True, check=False, input=input, timeout=timeout,
                              env={**HOST_ENV, **(env or {})}, cwd="/",
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise HarnessError(f"{self.name}: {shlex.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        return proc

    def ssh_argv(self, *, connect_timeout: int = 3) -> list[str]:
        """``ssh`` command line (without the remote command) that logs into this host as root."""
        return [_tool("ssh"), "-F", "/dev/null", *self.fleet.ssh_options(connect_timeout=connect_timeout),
                "-o", "BatchMode=yes", f"root@{self.addr}"]

    def ssh(self, cmd: str, *, check: bool = False, timeout: float = 60, connect_timeout: int = 3) -> subprocess.CompletedProcess[str]:
        """Run the shell command ``cmd`` on the host over SSH (a real login, as Ansible does)."""
        argv = [*self.ssh_argv(connect_timeout=connect_timeout), cmd]
        return _run(argv, check=check, timeout=timeout)

    def path(self, path: str | os.PathLike[str] = "/") -> Path:
        """``path`` as this host sees it, reachable from the controller (``/proc/<init>/root/...``).

        Reads and writes through it land in the host's private mounts, e.g.
        ``host.path("/srv/data/src/a.txt").write_text("x")``.
        """
        if self.init_pid is None:
            raise HarnessError(f"host {self.name} has no init process")
        return Path(f"/proc/{self.init_pid}/root") / os.fspath(path).lstrip("/")

    def write_tree(self, base: str, files: t.Mapping[str, bytes | str | None], mode: int | None = None) -> list[Path]:
        """Create ``files`` ({relative path: content}, None = directory) under ``base`` on the host.

        Returns the host-side paths (as seen inside the host) that were written.
        """
        written = []
        for rel, content in files.items():
            target = self.path(base) / rel
            if content is None:
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                data = content.encode() if isinstance(content, str) else content
                target.write_bytes(data)
                if mode is not None:
                    os.chmod(target, mode)
            written.append(Path(base) / rel)
        return written

    def fill(self, mount: str = "/srv/data/dest", leave_bytes: int = 0, name: str = ".fleet-fill") -> Path:
        """Fill the filesystem at ``mount`` with one preallocated file, leaving about ``leave_bytes`` free.

        Returns the host-side path of the filler (remove it to free the space).
        """
        target = self.path(mount) / name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            # posix_fallocate is all or nothing, and a filesystem cannot give
            # all of f_bavail to one file (metadata, xfs reserves): ask for
            # what is free, halve the request on ENOSPC, append until done.
            chunk = None
            while True:
                stats = os.statvfs(self.path(mount))
                free = stats.f_bfree * stats.f_frsize - leave_bytes  # root may use reserved blocks
                chunk = free if chunk is None else min(chunk, free)
                if chunk < stats.f_bsize:
                    break
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(fd)
        return Path(mount) / name

    def pids(self) -> list[int]:
        """Root-namespace PIDs of every process in this host's pid namespace (init included)."""
        if not pid_alive(self.init_pid, self.init_start):
            return []
        return [pid for pid, _started in _pids_in_ns("pid", self.init_pid or 0)]

    # -- network ---------------------------------------------------------------

    def link_down(self) -> None:
        """Cut the host's network: ``eth0`` down inside its netns (its address and sshd stay)."""
        _ip("-n", self.netns, "link", "set", "dev", "eth0", "down")

    def link_up(self) -> None:
        """Undo :meth:`link_down`."""
        _ip("-n", self.netns, "link", "set", "dev", "eth0", "up")

    def link_is_up(self) -> bool:
        proc = _ip("-n", self.netns, "-j", "link", "show", "dev", "eth0", check=False)
        return proc.returncode == 0 and "UP" in json.loads(proc.stdout)[0].get("flags", [])

    # -- sshd --------------------------------------------------------------------

    def start_sshd(self, timeout: float = 10) -> None:
        """Start the host's sshd (``-D``, inside all its namespaces) and wait until it answers."""
        if pid_alive(self.sshd_pid, self.sshd_start):
            return
        log = open(self.dir / "sshd.log", "ab")  # pylint: disable=consider-using-with
        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [*self.nsenter_argv(), _tool("sshd"), "-D", "-e", "-f", str(self.sshd_config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=HOST_ENV, cwd="/", start_new_session=True)
        finally:
            log.close()
        self.fleet.track(proc)
        self.sshd_parent_pid, self.sshd_parent_start = proc.pid, start_time(proc.pid)
        deadline = time.monotonic() + timeout
        while not self.sshd_pid:
            kids = [pid for pid in _children(proc.pid) if pid_alive(pid)]
            if kids:
                self.sshd_pid, self.sshd_start = kids[0], start_time(kids[0])
            elif proc.poll() is not None or time.monotonic() > deadline:
                break
            else:
                time.sleep(0.005)
        _wait_ssh_banner(self.addr, deadline, lambda: proc.poll() is None and pid_alive(self.sshd_pid, self.sshd_start),
                         f"{self.name}: sshd", self.dir / "sshd.log")
        self.fleet.save()

    def stop_sshd(self) -> None:
        """Stop the listening sshd (open sessions survive, as on a real host)."""
        _kill(self.sshd_pid, self.sshd_start, signal.SIGTERM)
        _wait_gone([(self.sshd_pid or 0, self.sshd_start)], 5)
        self.sshd_pid = self.sshd_start = None
        self.fleet.save()


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ssh_banner(addr: str, deadline: float, alive: t.Callable[[], bool], what: str, log: Path) -> None:
    """Wait until ``addr:22`` accepts a TCP connection from here and sends an SSH banner."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise HarnessError(f"{what} exited: {_log_tail(log)} (log: {log})")
        try:
            with socket.create_connection((addr, 22), timeout=1) as conn:
                conn.settimeout(2)
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise HarnessError(f"{what} at {addr}:22 did not answer ({last}): {_log_tail(log)} (log: {log})")


# --------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------

class Fleet:
    """N test hosts, their switch and the controller's link to it. Build with :meth:`create`."""

    def __init__(self, run_id: str, run_dir: Path) -> None:
        self.run_id = run_id
        self.run_dir = run_dir
        self.created_run_dir = False
        self.switch_netns = f"{run_id}-sw"
        self.controller_if = run_id
        self.subnet: str | None = None
        self.controller_addr: str | None = None
        self.route: str | None = None
        self.owner_pid: int | None = None
        self.owner_start: int | None = None
        self.python = DEFAULT_PYTHON
        self.src_fstype, self.dest_fstype = "ext4", "xfs"
        self.src_mb, self.dest_mb = 64, 300
        self.hosts: list[Host] = []
        self.cp_dir: Path | None = None
        self.timings: dict[str, float] = {}
        self.down_done = False
        self.created = time.time()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    # -- container protocol --------------------------------------------------

    def __iter__(self) -> t.Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, key: int | str) -> Host:
        if isinstance(key, int):
            return self.hosts[key]
        for host in self.hosts:
            if host.name == key:
                return host
        raise KeyError(key)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<Fleet {self.run_id} {self.subnet} hosts={[h.name for h in self.hosts]}>"

    # -- paths -----------------------------------------------------------------

    @property
    def key(self) -> Path:
        """The client's private key (root logs in with it on every host)."""
        return self.run_dir / "keys" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Keep ``proc`` (our child) so teardown can reap it."""
        with self._lock:
            self._procs.append(proc)

    # -- ssh / Ansible ---------------------------------------------------------

    def ssh_options(self, *, connect_timeout: int = 3, server_alive: int = 1) -> list[str]:
        """ssh ``-i``/``-o`` options: our key, our known_hosts only, strict host key checking."""
        return ["-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={connect_timeout}",
                "-o", f"ServerAliveInterval={server_alive}", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]

    def inventory(self, path: str | os.PathLike[str] | None = None, *, python: str | None = None,
                  group: str = "fleet", connect_timeout: int = 3, server_alive: int = 1,
                  extra_vars: t.Mapping[str, t.Any] | None = None,
                  host_vars: t.Mapping[str, t.Mapping[str, t.Any]] | None = None) -> Path:
        """Write an Ansible YAML inventory of the fleet (default ``<run dir>/inventory.yml``); return its path.

        Hosts are in group ``group``; ``python`` is ``ansible_python_interpreter``
        (default: the fleet's, ``/usr/bin/python3`` unless set at create time;
        ``/work/main/.venv/bin/python`` has blake3, the system python does not).
        ``connect_timeout`` (ssh ConnectTimeout and ansible_ssh_timeout) and
        ``server_alive`` (ServerAliveInterval, 3 missed = dead) keep an
        unreachable host from stalling a play. ``extra_vars`` go into the
        group's vars, ``host_vars`` ({name: {var: value}}) into each host.
        """
        target = Path(path) if path is not None else self.run_dir / INVENTORY_FILE
        common = self.ssh_options(connect_timeout=connect_timeout, server_alive=server_alive)[2:]  # no -i
        group_vars: dict[str, t.Any] = {
            "ansible_user": "root",
            "ansible_port": 22,
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": shlex.join(common),
            "ansible_ssh_timeout": connect_timeout,
            "ansible_python_interpreter": python or self.python,
        }
        if self.cp_dir is not None:
            group_vars["ansible_control_path_dir"] = str(self.cp_dir)
        group_vars.update(extra_vars or {})
        lines = [f"# Test fleet {self.run_id} (tests/fleet/harness.py); valid until its teardown.",
                 "all:", "  children:", f"    {group}:", "      hosts:"]
        for host in self.hosts:
            lines.append(f"        {host.name}:")
            lines.append(f"          ansible_host: {json.dumps(host.addr)}")
            for var, value in (host_vars or {}).get(host.name, {}).items():
                lines.append(f"          {var}: {json.dumps(value)}")
        lines.append("      vars:")
        for var, value in group_vars.items():
            lines.append(f"        {var}: {json.dumps(value)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, "\n".join(lines) + "\n")
        return target

    def ansible(self, *args: str, tool: str = "ansible", inventory: str | os.PathLike[str] | None = None,
                timeout: float = 300, env: t.Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``ansible`` (or ``tool``, e.g. ``ansible-playbook``) with ``-i`` the fleet's inventory.

        The inventory defaults to ``<run dir>/inventory.yml``, written with
        defaults if missing. See :func:`run_ansible`.
        """
        if inventory is None:
            inventory = self.run_dir / INVENTORY_FILE
            if not inventory.exists():
                self.inventory(inventory)
        return run_ansible([tool, "-i", str(inventory), *args], timeout=timeout, env=env, cwd=cwd)

    # -- state -------------------------------------------------------------------

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "created_run_dir": self.created_run_dir,
            "switch_netns": self.switch_netns, "controller_if": self.controller_if, "subnet": self.subnet,
            "controller_addr": self.controller_addr, "route": self.route,
            "owner_pid": self.owner_pid, "owner_start": self.owner_start, "python": self.python,
            "src_fstype": self.src_fstype, "dest_fstype": self.dest_fstype,
            "src_mb": self.src_mb, "dest_mb": self.dest_mb,
            "key": str(self.key), "known_hosts": str(self.known_hosts),
            "cp_dir": str(self.cp_dir) if self.cp_dir else None,
            "hosts": [host.to_dict() for host in self.hosts], "timings": self.timings,
        }

    def save(self) -> None:
        """Write the state file and the registry entry (both atomically)."""
        with self._lock:
            data = self.to_dict()
            if self.run_dir.is_dir():
                _write_atomic(self.state_file, json.dumps(data, indent=2) + "\n")
            REGISTRY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            entry = {key: data[key] for key in ("run_id", "run_dir", "owner_pid", "owner_start", "subnet")}
            entry["created"] = self.created
            _write_atomic(REGISTRY_DIR / f"{self.run_id}.json", json.dumps(entry) + "\n")

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> Fleet:
        fleet = cls(data["run_id"], Path(data["run_dir"]))
        for key in ("created_run_dir", "switch_netns", "controller_if", "subnet", "controller_addr", "route",
                    "owner_pid", "owner_start", "python", "src_fstype", "dest_fstype", "src_mb", "dest_mb"):
            if key in data:
                setattr(fleet, key, data[key])
        fleet.cp_dir = Path(data["cp_dir"]) if data.get("cp_dir") else None
        fleet.timings = dict(data.get("timings") or {})
        fleet.hosts = [Host.from_dict(fleet, host) for host in data.get("hosts", [])]
        return fleet

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Fleet:
        """The fleet whose state file is in ``run_dir`` (e.g. one started by the CLI)."""
        path = Path(run_dir) / STATE_FILE
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise HarnessError(f"no fleet state file at {path}") from exc

    # -- bring-up ------------------------------------------------------------------

    @classmethod
    def create(cls, hosts: int = 3, run_dir: str | os.PathLike[str] | None = None, *,
               names: t.Sequence[str] | None = None, src_mb: int = 64, dest_mb: int = 300,
               src_fstype: str = "ext4", dest_fstype: str = "xfs", python: str = DEFAULT_PYTHON,
               owner_pid: int | None = _UNSET, sshd_options: t.Mapping[str, str] | None = None,
               cleanup_stale_runs: bool = True) -> Fleet:
        """Build a fleet of ``hosts`` hosts and return it, ready for SSH.

        ``run_dir``: where keys, configs, images, logs and the state file go
        (default: a new ``$TMPDIR/dmfXXXXXX``); an existing directory is
        used as is and only the harness's own entries are removed at
        teardown. ``names``: inventory names/hostnames (default h0, h1, ...).
        ``src_mb``/``dest_mb`` and ``src_fstype``/``dest_fstype``: the sparse
        images behind /srv/data/src and /srv/data/dest (xfs needs >= 300).
        ``python``: the inventory's default ansible_python_interpreter.
        ``owner_pid``: the process whose death makes the run stale (default:
        this process, which also tears the fleet down at exit; None: nobody,
        the fleet lives until :meth:`down`). ``sshd_options``: extra sshd
        config keywords. On any failure everything made so far is torn down
        and HarnessError is raised.
        """
        reason = unavailable()
        if reason:
            raise HarnessError(reason)
        if hosts < 1 or hosts > 200:
            raise HarnessError(f"hosts must be between 1 and 200, not {hosts}")
        names = list(names) if names is not None else [f"h{i}" for i in range(hosts)]
        if len(names) != hosts or len(set(names)) != hosts or not all(re.match(r"^[a-z][a-z0-9-]{0,62}$", n) for n in names):
            raise HarnessError(f"names must be {hosts} distinct lowercase hostnames, not {names}")
        for fstype, size in ((src_fstype, src_mb), (dest_fstype, dest_mb)):
            if fstype not in MKFS:
                raise HarnessError(f"unsupported filesystem {fstype!r}; known: {sorted(MKFS)}")
            if size < MKFS[fstype][1]:
                raise HarnessError(f"{fstype} needs an image of at least {MKFS[fstype][1]} MiB, not {size}")
        if cleanup_stale_runs:
            cleanup_stale()

        started = time.monotonic()
        run_id = _new_run_id()
        created = run_dir is None or not Path(run_dir).exists()
        path = Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()) / run_id
        if not created and (path / STATE_FILE).exists():
            raise HarnessError(f"{path} already holds a fleet ({path / STATE_FILE}); run `down` first")
        clashes = [entry for entry in RUN_DIR_ENTRIES if not created and (path / entry).exists()]
        if clashes:  # teardown removes these names: never adopt someone else's files
            raise HarnessError(f"{path} already has {', '.join(clashes)}; use an empty or new directory")
        fleet = cls(run_id, path.resolve())
        fleet.created_run_dir = created
        fleet.python = python
        fleet.src_fstype, fleet.dest_fstype, fleet.src_mb, fleet.dest_mb = src_fstype, dest_fstype, src_mb, dest_mb
        if owner_pid is _UNSET:
            owner_pid = os.getpid()
        owner_start = start_time(owner_pid)
        if owner_pid is not None and owner_start is None:
            raise HarnessError(f"owner process {owner_pid} does not exist")
        # Until it is up the fleet belongs to this process, so a bring-up
        # killed half way is stale as soon as this process is gone.
        fleet.owner_pid, fleet.owner_start = os.getpid(), start_time(os.getpid())
        try:
            fleet.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fleet.save()  # registry entry first: from here on cleanup can find the run
            fleet._build(names, sshd_options or {})
        except BaseException as exc:
            try:
                report = fleet.down()
            except Exception as down_exc:  # pylint: disable=broad-exception-caught
                raise HarnessError(f"fleet {run_id}: bring-up failed ({exc}) and so did the teardown: {down_exc}") from exc
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
                raise
            error = HarnessError(f"fleet {run_id}: bring-up failed: {exc}"
                                 + (f"; teardown left {report['leftovers']}" if report["leftovers"] else ""))
            error.run_id, error.teardown = run_id, report
            raise error from exc
        fleet.timings["up"] = round(time.monotonic() - started, 3)
        fleet.owner_pid, fleet.owner_start = owner_pid, owner_start
        fleet.save()
        if owner_pid == os.getpid():
            _ATEXIT_FLEETS.append(fleet)
        return fleet

    def _build(self, names: list[str], sshd_options: t.Mapping[str, str]) -> None:
        for sub in ("keys", "hosts"):
            (self.run_dir / sub).mkdir(mode=0o700, exist_ok=True)
        self._choose_cp_dir()
        if not os.path.isdir("/run/sshd"):  # sshd's privilege separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

        mark = time.monotonic()
        with _registry_lock():
            subnet = _choose_subnet()
            net = ipaddress.ip_network(subnet)
            self.subnet = subnet
            self.controller_addr = str(net[1])
            self.hosts = [Host(self, i, name, str(net[10 + i])) for i, name in enumerate(names)]
            self.save()
            self._build_switch()
        self.timings["network"] = round(time.monotonic() - mark, 3)

        mark = time.monotonic()
        keygen = [_spawn([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"{self.run_id}-controller", "-f", str(self.key)])]
        mkfs = []
        for host in self.hosts:
            host.dir.mkdir(mode=0o700)
            keygen.append(_spawn([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"{self.run_id}-{host.name}",
                                  "-f", str(host.host_key)]))
            for image, fstype, size in ((host.src_image, self.src_fstype, self.src_mb),
                                        (host.dest_image, self.dest_fstype, self.dest_mb)):
                with open(image, "xb") as handle:
                    handle.truncate(size * 1024 * 1024)
                cmd, _min = MKFS[fstype]
                mkfs.append((image, _spawn([_tool(cmd[0]), *cmd[1:], str(image)])))
        errors = []
        for proc in keygen:
            out = proc.communicate(timeout=60)[0]
            if proc.returncode != 0:
                errors.append(f"ssh-keygen exited {proc.returncode}: {out.decode(errors='replace').strip()}")
        for image, proc in mkfs:
            out = proc.communicate(timeout=120)[0]
            if proc.returncode != 0:
                errors.append(f"mkfs of {image} exited {proc.returncode}: {out.decode(errors='replace').strip()}")
        if errors:
            raise HarnessError("; ".join(errors))
        pub = (self.key.parent / "id_ed25519.pub").read_text(encoding="utf-8")
        _write_atomic(self.run_dir / "keys" / "authorized_keys", pub, 0o600)
        known = []
        for host in self.hosts:
            key_type, key_data = (host.dir / "ssh_host_ed25519_key.pub").read_text(encoding="utf-8").split()[:2]
            known.append(f"{host.addr} {key_type} {key_data}")
            _write_atomic(host.sshd_config, self._sshd_config(host, sshd_options))
        _write_atomic(self.known_hosts, "\n".join(known) + "\n")
        self.timings["keys_images"] = round(time.monotonic() - mark, 3)

        mark = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(self.hosts), 16)) as pool:
            futures = [pool.submit(self._build_host, host) for host in self.hosts]
            failures = []
            for future in futures:
                try:
                    future.result()
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    failures.append(str(exc))
        self.save()
        if failures:
            raise HarnessError("; ".join(failures))
        self.timings["hosts"] = round(time.monotonic() - mark, 3)

    def _choose_cp_dir(self) -> None:
        """A directory for Ansible's ssh ControlPath sockets (paths must stay under ~104 bytes)."""
        cp_dir = self.run_dir / "cp"
        if len(str(cp_dir)) + 42 > 100:
            cp_dir = Path(tempfile.gettempdir()) / f"{self.run_id}-cp"
        cp_dir.mkdir(mode=0o700, exist_ok=True)
        self.cp_dir = cp_dir

    def _build_switch(self) -> None:
        """Switch netns with bridge br0, and the controller's veth into it (called under the lock)."""
        sw = self.switch_netns
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        _ip("link", "add", self.controller_if, "type", "veth", "peer", "name", "up0", "netns", sw)
        _ip("-n", sw, "link", "set", "up0", "master", "br0", "up")
        with contextlib.suppress(OSError):  # no IPv6 link-local address or DAD traffic on our side
            Path(f"/proc/sys/net/ipv6/conf/{self.controller_if}/disable_ipv6").write_text("1", encoding="ascii")
        _ip("addr", "add", f"{self.controller_addr}/{ipaddress.ip_network(self.subnet).prefixlen}", "dev", self.controller_if)
        _ip("link", "set", self.controller_if, "up")
        self.route = self.subnet
        self.save()
        _ip("route", "add", "unreachable", self.subnet, "metric", str(ROUTE_METRIC))
        for host in self.hosts:
            _ip("netns", "add", host.netns)
            _ip("-n", sw, "link", "add", host.switch_port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("-n", sw, "link", "set", host.switch_port, "master", "br0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.addr}/{ipaddress.ip_network(self.subnet).prefixlen}", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def _sshd_config(self, host: Host, extra: t.Mapping[str, str]) -> str:
        options = {
            "ListenAddress": f"{host.addr}:22",
            "HostKey": str(host.host_key),
            "PidFile": str(host.dir / "sshd.pid"),
            "AuthorizedKeysFile": str(self.run_dir / "keys" / "authorized_keys"),
            "PermitRootLogin": "prohibit-password",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UsePAM": "no",
            "StrictModes": "no",
            "UseDNS": "no",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "MaxStartups": "100:30:200",
            "MaxSessions": "100",
            "Subsystem": "sftp internal-sftp",
            "AcceptEnv": "LANG LC_*",
            "LogLevel": "INFO",
        }
        options.update(extra)
        return f"# sshd for test host {host.name} of fleet {self.run_id}\n" + "".join(f"{k} {v}\n" for k, v in options.items())

    def _build_host(self, host: Host) -> None:
        """Start the host's init in its namespaces, mount its filesystems, start its sshd."""
        log = open(host.dir / "init.log", "ab")  # pylint: disable=consider-using-with
        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [_tool("ip"), "netns", "exec", host.netns,
                 _tool("unshare"), "--mount", "--propagation", "private", "--uts", "--pid", "--fork",
                 "--kill-child", "--mount-proc", "--", sys.executable, "-c", INIT_SCRIPT, host.name],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=HOST_ENV, cwd="/",
                start_new_session=True)
        finally:
            log.close()
        self.track(proc)
        host.holder_pid, host.holder_start = proc.pid, start_time(proc.pid)
        assert proc.stdout is not None
        ready, _w, _x = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if line != b"ready\n":
            raise HarnessError(f"{host.name}: namespace holder did not start; see {host.dir / 'init.log'}")
        kids = _children(proc.pid)
        if len(kids) != 1:
            raise HarnessError(f"{host.name}: expected one init under unshare {proc.pid}, found {kids}")
        host.init_pid, host.init_start = kids[0], start_time(kids[0])
        self.save()
        mounts = (
            "{ [ -d /srv ] || mkdir -m 0755 /srv; }"  # FHS has it; only a missing one is made
            f" && mount -t tmpfs -o size={SRV_TMPFS_SIZE},mode=0755 {host.netns}-srv /srv"
            " && mkdir -p /srv/data/src /srv/data/dest"
            f" && mount -t {self.src_fstype} -o loop {shlex.quote(str(host.src_image))} /srv/data/src"
            f" && mount -t {self.dest_fstype} -o loop {shlex.quote(str(host.dest_image))} /srv/data/dest"
        )
        # Root's shell rc file, masked inside the host (see the module docstring).
        bashrc = os.path.join(pwd.getpwnam("root").pw_dir, ".bashrc")
        if os.path.isfile(bashrc):
            mounts += f" && mount --bind /dev/null {shlex.quote(bashrc)}"
        _run([*host.nsenter_argv(pid_ns=False), "/bin/sh", "-c", mounts], env=HOST_ENV)
        host.start_sshd()

    # -- teardown ------------------------------------------------------------------

    def down(self) -> dict[str, t.Any]:
        """Tear everything down; idempotent. Returns what was removed and what (if anything) is left."""
        started = time.monotonic()
        report = _teardown(self.run_id, self.to_dict(), self._procs)
        self.down_done = True
        self.timings["down"] = report["seconds"] = round(time.monotonic() - started, 3)
        return report

    def leftovers(self) -> list[str]:
        """Resources of this run still present (empty after a clean teardown)."""
        return _leftovers(self.run_id, self.to_dict())


_ATEXIT_FLEETS: list[Fleet] = []


def _atexit_down() -> None:
    for fleet in _ATEXIT_FLEETS:
        if not fleet.down_done and fleet.owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                fleet.down()


atexit.register(_atexit_down)


def _new_run_id() -> str:
    taken = set(_registry_read()) | {m.group(1) for m in map(NETNS_RE.match, _netns_list()) if m}
    while True:
        run_id = f"{PREFIX}{random.getrandbits(24):06x}"
        if run_id not in taken and not _link_exists(run_id):
            return run_id


def _choose_subnet() -> str:
    """A random 169.254.X.0/24 that no route, address or registered run uses (caller holds the lock)."""
    used: list[ipaddress.IPv4Network] = []
    for args in (("-4", "-j", "route", "show", "table", "all"), ("-4", "-j", "addr", "show")):
        proc = _ip(*args, check=False)
        items = json.loads(proc.stdout or "[]")
        if args[2] == "addr":
            items = [{"dst": f"{a['local']}/32"} for link in items for a in link.get("addr_info", []) if "local" in a]
        for item in items:
            dst = item.get("dst", "default")
            if dst == "default":
                continue
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
                if net.prefixlen > 16:  # a /16 link-local route elsewhere does not clash with our /24
                    used.append(net)
    for entry in _registry_read().values():
        if entry.get("subnet"):
            used.append(ipaddress.ip_network(entry["subnet"]))
    # 169.254.0.x and .255.x are reserved (RFC 3927); 169.254.169.x holds cloud metadata services.
    candidates = [x for x in range(1, 255) if x != 169]
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.ip_network(f"169.254.{third}.0/24")
        if not any(net.overlaps(other) for other in used):
            return str(net)
    raise HarnessError("no free 169.254.X.0/24 subnet")


# --------------------------------------------------------------------------
# Teardown (works from a state dict, or from names alone)
# --------------------------------------------------------------------------

def _run_images(run_id: str, state: t.Mapping[str, t.Any]) -> set[str]:
    images = {img for host in state.get("hosts", []) for img in (host.get("src_image"), host.get("dest_image")) if img}
    for _dev, back in _loop_devices():
        match = IMAGE_RE.match(os.path.basename(back.removesuffix(" (deleted)")))
        if match and match.group(1) == run_id:
            images.add(back.removesuffix(" (deleted)"))
    return images


def _teardown(run_id: str, state: t.Mapping[str, t.Any], children: t.Sequence[subprocess.Popen[bytes]] = ()) -> dict[str, t.Any]:
    """Remove every resource of run ``run_id``: processes, loop devices, namespaces, links, files."""
    if not RUN_ID_RE.match(run_id):
        raise HarnessError(f"not a fleet run id: {run_id!r}")
    report: dict[str, t.Any] = {"run_id": run_id, "killed": [], "loops": [], "netns": [], "removed": [], "phases": {}}
    hosts = list(state.get("hosts", []))
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        report["phases"][name] = round(now - mark, 3)
        mark = now

    # 1. Ansible's ssh control masters for the fleet: ask each to exit.
    cp_dir = state.get("cp_dir")
    if cp_dir and os.path.isdir(cp_dir) and _which("ssh"):
        masters = [_spawn([_tool("ssh"), "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "exit", "fleet"])
                   for sock in Path(cp_dir).iterdir() if sock.is_socket()]
        for proc in masters:
            try:
                proc.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

    phase("ssh_masters")

    # 2. Processes. Killing a host's init makes the kernel kill its whole pid
    # namespace; the processes outside it (unshare, nsenter) then reap their
    # child and exit by themselves, which is faster than killing them too
    # (their zombies wait for whoever adopts them, and the namespace's
    # teardown waits for those). Then whatever else is recorded or still in
    # our netns.
    procs: list[tuple[int, int | None]] = []
    # Processes that joined a host's mount namespace but not its pid
    # namespace keep its mounts (and loop devices) alive: note them while
    # the init still runs (a dead namespace's inode number may be reused).
    in_mount_ns = []
    for host in hosts:
        if pid_alive(host.get("init_pid"), host.get("init_start")):
            in_mount_ns += _pids_in_ns("mnt", host["init_pid"])
    for host in hosts:
        if _kill(host.get("init_pid"), host.get("init_start")):
            procs.append((host["init_pid"], host["init_start"]))
            report["killed"].append(host["init_pid"])
    _wait_gone(procs, 5)
    for key in ("sshd", "sshd_parent", "holder"):
        for host in hosts:
            pid, started = host.get(f"{key}_pid"), host.get(f"{key}_start")
            if _wait_gone([(pid, started)], 0.5) and _kill(pid, started):
                procs.append((pid, started))
                report["killed"].append(pid)
    for pid, started in in_mount_ns:
        if _kill(pid, started):
            procs.append((pid, started))
            report["killed"].append(pid)
    for ns in sorted(ns for ns in _netns_list() if ns.startswith(f"{run_id}-")):
        for pid in _netns_pids(ns):
            started = start_time(pid)
            if _kill(pid, started):
                procs.append((pid, started))
                report["killed"].append(pid)
    for child in children:  # reap our own children so they leave no zombie
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    still = _wait_gone(procs, 5)
    if still:
        report["left_processes"] = still
    phase("processes")

    # 3. Loop devices: the kernel detaches them (autoclear) when the host's
    # mount namespace dies with its last process; detach any it did not.
    images = _run_images(run_id, state)
    deadline = time.monotonic() + 2
    pending = {img: _loops_for(img) for img in images if os.path.exists(img)}
    while any(pending.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
        pending = {img: _loops_for(img) for img in pending}
    for devices in pending.values():
        for dev in devices:
            _run([_tool("losetup"), "--detach", dev], check=False)
            report["loops"].append(dev)
    phase("loops")

    # 4. Network: the controller's veth (its peer goes with it), the safety
    # route, then the namespaces (their veths and the bridge go with them).
    ctl = state.get("controller_if") or run_id
    if RUN_ID_RE.match(ctl) and _link_exists(ctl):
        _ip("link", "del", ctl, check=False)
        report["removed"].append(f"link {ctl}")
    if state.get("route"):
        while _ip("route", "del", "unreachable", state["route"], "metric", str(ROUTE_METRIC), check=False).returncode == 0:
            report["removed"].append(f"route unreachable {state['route']}")
    for ns in sorted(ns for ns in _netns_list() if ns.startswith(f"{run_id}-")):
        _ip("netns", "del", ns, check=False)
        report["netns"].append(ns)
    phase("network")

    # 5. Files: the run directory (only our entries when it pre-existed),
    # a ControlPath directory kept outside it, the registry entry.
    run_dir = state.get("run_dir")
    if run_dir and os.path.isdir(run_dir):
        if state.get("created_run_dir"):
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            for entry in RUN_DIR_ENTRIES:
                target = Path(run_dir) / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists() or target.is_symlink():
                    target.unlink()
        report["removed"].append(run_dir)
    if cp_dir and os.path.basename(cp_dir) == f"{run_id}-cp":
        shutil.rmtree(cp_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (REGISTRY_DIR / f"{run_id}.json").unlink()
    phase("files")
    report["leftovers"] = _leftovers(run_id, state)
    phase("check")
    return report


def _leftovers(run_id: str, state: t.Mapping[str, t.Any]) -> list[str]:
    """Everything of run ``run_id`` still present: processes, loop devices, netns, links, routes, files."""
    left = []
    for host in state.get("hosts", []):
        for key in ("init", "sshd", "sshd_parent", "holder"):
            if pid_alive(host.get(f"{key}_pid"), host.get(f"{key}_start")):
                left.append(f"process {host[f'{key}_pid']} ({host.get('name')} {key})")
    for img in _run_images(run_id, state):
        for dev in _loops_for(img) if os.path.exists(img) else []:
            left.append(f"loop {dev} ({img})")
    for dev, back in _loop_devices():
        match = IMAGE_RE.match(os.path.basename(back.removesuffix(" (deleted)")))
        if match and match.group(1) == run_id and f"loop {dev} " not in " ".join(left):
            left.append(f"loop {dev} ({back})")
    left += [f"netns {ns}" for ns in _netns_list() if ns.startswith(f"{run_id}-")]
    if _link_exists(state.get("controller_if") or run_id):
        left.append(f"link {state.get('controller_if') or run_id}")
    if state.get("route"):
        proc = _ip("route", "show", "type", "unreachable", state["route"], check=False)
        if proc.stdout.strip():
            left.append(f"route {proc.stdout.strip()}")
    run_dir = state.get("run_dir")
    if run_dir and state.get("created_run_dir") and os.path.exists(run_dir):
        left.append(f"directory {run_dir}")
    if (REGISTRY_DIR / f"{run_id}.json").exists():
        left.append(f"registry {REGISTRY_DIR / f'{run_id}.json'}")
    return left


REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def ansible_bin(tool: str = "ansible") -> str:
    """Path of an ansible-* tool: the repository's .venv, else beside this python, else PATH."""
    for directory in (REPO_ROOT / ".venv" / "bin", Path(sys.executable).parent):
        if (directory / tool).exists():
            return str(directory / tool)
    return _tool(tool)


def run_ansible(argv: t.Sequence[str], *, timeout: float = 300, env: t.Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (first item: ``ansible``, ``ansible-playbook``...) from the repository root.

    Output is captured as text, colour off; the repository's ansible.cfg
    applies (pass ``-i`` explicitly: its default inventory is localhost).
    Not checked: look at ``returncode`` (ansible: 4 = some host unreachable).
    """
    full_env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", **(env or {})}
    return subprocess.run([ansible_bin(argv[0]), *argv[1:]], capture_output=True, text=True, check=False,
                          timeout=timeout, env=full_env, cwd=str(cwd or REPO_ROOT), stdin=subprocess.DEVNULL)


def down(run_dir: str | os.PathLike[str]) -> dict[str, t.Any]:
    """Tear down the fleet whose state file is in ``run_dir``; a no-op when there is none."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return {"run_id": None, "leftovers": [], "note": f"no fleet state at {path}"}
    return Fleet.load(run_dir).down()


def list_runs() -> list[dict[str, t.Any]]:
    """Every run known on this machine (registry entries and prefixed leftovers), with its status."""
    # Resources first, registry second: a run writes its registry entry
    # before it creates anything, so a run seen here is never taken for an
    # orphan just because it started between the two reads.
    ids = {m.group(1) for m in map(NETNS_RE.match, _netns_list()) if m}
    ids |= {name for name in os.listdir("/sys/class/net") if RUN_ID_RE.match(name)}
    for _dev, back in _loop_devices():
        match = IMAGE_RE.match(os.path.basename(back.removesuffix(" (deleted)")))
        if match:
            ids.add(match.group(1))
    registry = _registry_read()
    ids |= set(registry)
    runs = []
    for run_id in sorted(ids):
        entry = registry.get(run_id)
        if entry is None:
            status = "orphan"
        else:
            alive = _owner_alive(entry)
            status = "detached" if alive is None else ("live" if alive else "stale")
        runs.append({"run_id": run_id, "status": status, **(entry or {})})
    return runs


def cleanup_stale(include_detached: bool = False) -> list[str]:
    """Tear down runs whose owner process is dead, and prefixed resources no registered run owns.

    Runs with a live owner are never touched; detached runs (started by the
    CLI without ``--owner-pid``) only with ``include_detached``. Returns the
    run ids torn down.
    """
    cleaned = []
    with _registry_lock():
        for run in list_runs():
            if run["status"] in ("stale", "orphan") or (include_detached and run["status"] == "detached"):
                state: dict[str, t.Any] = dict(run)
                with contextlib.suppress(OSError, ValueError):
                    state = json.loads((Path(run["run_dir"]) / STATE_FILE).read_text(encoding="utf-8"))
                # Without a state file only name-based cleanup applies: never
                # delete a run directory unless it is a default one, named after the run.
                if "hosts" not in state:
                    if os.path.basename(str(state.get("run_dir", ""))) == run["run_id"]:
                        state["created_run_dir"] = True
                    else:
                        state.pop("run_dir", None)
                _teardown(run["run_id"], state)
                cleaned.append(run["run_id"])
    return cleaned


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _cli(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.py", description="Test fleet of SSH hosts in network namespaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="build a fleet; writes DIR/state.json and DIR/inventory.yml")
    up_p.add_argument("--hosts", type=int, default=3)
    up_p.add_argument("--dir", required=True, help="run directory (created if missing)")
    up_p.add_argument("--names", help="comma-separated host names (default h0,h1,...)")
    up_p.add_argument("--src-mb", type=int, default=64)
    up_p.add_argument("--dest-mb", type=int, default=300)
    up_p.add_argument("--src-fstype", default="ext4", choices=sorted(MKFS))
    up_p.add_argument("--dest-fstype", default="xfs", choices=sorted(MKFS))
    up_p.add_argument("--python", default=DEFAULT_PYTHON, help="ansible_python_interpreter in the inventory")
    up_p.add_argument("--inventory", help="inventory path (default DIR/inventory.yml)")
    up_p.add_argument("--group", default="fleet", help="inventory group of the hosts")
    up_p.add_argument("--connect-timeout", type=int, default=3)
    up_p.add_argument("--owner-pid", type=int, default=None,
                      help="tie the fleet to this process: cleanup-stale removes it once the process is gone (default: none)")
    down_p = sub.add_parser("down", help="tear down the fleet in DIR")
    down_p.add_argument("--dir", required=True)
    sub.add_parser("list", help="list fleets on this machine")
    stale_p = sub.add_parser("cleanup-stale", help="tear down fleets whose owner is dead, and orphans")
    stale_p.add_argument("--include-detached", action="store_true", help="also fleets started without --owner-pid")
    args = parser.parse_args(argv)

    if args.command == "up":
        try:
            fleet = Fleet.create(args.hosts, args.dir, names=args.names.split(",") if args.names else None,
                                 src_mb=args.src_mb, dest_mb=args.dest_mb, src_fstype=args.src_fstype,
                                 dest_fstype=args.dest_fstype, python=args.python, owner_pid=args.owner_pid)
        except HarnessError as exc:
            print(f"harness.py up: {exc}", file=sys.stderr)
            return 1
        inventory = fleet.inventory(args.inventory, group=args.group, connect_timeout=args.connect_timeout)
        print(json.dumps({"run_id": fleet.run_id, "run_dir": str(fleet.run_dir), "inventory": str(inventory),
                          "subnet": fleet.subnet, "key": str(fleet.key), "known_hosts": str(fleet.known_hosts),
                          "hosts": {h.name: h.addr for h in fleet}, "timings": fleet.timings}, indent=2))
        return 0
    if args.command == "down":
        report = down(args.dir)
        print(json.dumps(report, indent=2))
        return 1 if report.get("leftovers") else 0
    if args.command == "list":
        print(json.dumps(list_runs(), indent=2))
        return 0
    print(json.dumps(cleanup_stale(include_detached=args.include_detached)))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
