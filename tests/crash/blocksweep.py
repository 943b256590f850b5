# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""blocksweep: power cuts of real mover runs on real ext4, xfs and btrfs (issue 11).

The sweeps of ``test_block_sweeps.py`` are built from this module and
:mod:`blockdev` (a FUSE disk under loop devices that logs every block write
and flush of every disk in ONE log).

One sweep
---------

1. A :class:`Bench`: the disks of a configuration on one blockdev daemon,
   each with a real filesystem, mounted at fixed paths (``base/run/<disk>``;
   a disk may be mounted inside another's tree, e.g. a filesystem nested in
   the destination). Source on one disk, destination and state directory on
   another (or wherever the configuration says).
2. The tree is written and made durable (syncfs of every disk), optional
   setup runs (a pre-seeded destination copied without sync; a run of the
   mover killed at a step), a mark ``start``, the real mover in a child
   process (``tests/tools/mover_variant.py``: ``mover_cli.py`` with at most
   one test-side change, see there), a mark ``end``.
3. Crash states of the log between the two marks (:class:`Cutter`), for every
   flush record ``f`` of any disk:

   * ``prefix``: every write logged before ``f`` reached its disk (the state
     ``blockdev.Replayer`` builds);
   * ``lose``: every write not yet flushed *by its own disk* is lost: each
     disk holds exactly what its own flushes covered (the other disks' caches
     are lost at the same instant; a write to the source disk never survives
     because the destination disk flushed);
   * ``subset``: as ``lose``, but each unflushed write of every disk is kept
     with probability 1/2 (seeded; CrashMonkey's reordering of a volatile
     cache, extended to several disks);

   and the end of the run (``lose`` and ``subset``): a run that said
   complete must be complete after a cut right after it returned.
4. Each sampled state is written to images, mounted at the run's paths
   (writable: ext4's journal, xfs's log, btrfs's log tree are recovered as
   after a power loss) and checked with :func:`invariant`. A sample of states
   is *recovered*: written onto the live disks (logged), mounted, checked,
   the mover run again on it, then cut once more at the end of that recovery
   (``lose`` and ``subset``: the completed move must survive it,
   :func:`final_problems`) and at one flush inside it (:func:`invariant`).

Sampling (CI): a seeded sample of the states (:func:`sample`): the seed is
``BLOCKSWEEP_SEED`` (default 11) combined with the sweep's name; the end
states always, the rest drawn from the whole run, a few of them recovered
(spread over the run). ``BLOCKSWEEP_FULL=1`` (``make crash-full``) checks
and recovers every state (the subsets: one seed per flush).
``BLOCKSWEEP_REPORT=FILE`` appends one JSON line per sweep (the numbers).

Reproducing: two runs of the mover are never quite the same log (the
kernel's writeback and journal timers), so a state is named by its log: a
failing sweep prints the log's path, its seed and the state's index, and
``python blocksweep.py image LOG --seed S --state N OUTDIR`` writes that
state's disk images again (mount them, e.g. with ``mount -o loop``; to run
the mover on them, mount them at the run's paths, ``<base>/run/<disk>``: the
journal knows the job by its paths). ``BLOCKSWEEP_STATES=3,17`` limits a
sweep to these indices of its own (new) list, to explore.

The invariant (the one of ``helpers_recovery.check_invariant``, widened for
destinations that held something before the run):

* every file's exact content is at its source name or at its final
  destination name (or both), never neither; a symbolic link likewise;
* a final destination name never holds partial or other content, except a
  file that was there before the run and that the mover has not yet
  replaced (it then holds that file: for one written by ``cp`` without sync,
  whatever of it the cut kept) while its source is still there;
* a source is never altered;
* the journal says copied/done only for entries whose destination is whole,
  and done (in move mode) only once the source name is gone.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import mmap
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import typing as t
import zlib
from contextlib import contextmanager
from pathlib import Path

import blockdev
from blockdev import BLOCK, DISCARD, FLUSH, HEADER, LOG_MAGIC, MARK, WRITE, ZERO_BLOCK, Record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'functional'))
# pylint: disable-next=wrong-import-position
from helpers_recovery import (  # noqa: E402
    CliRun,
    FileSpec,
    Layout,
    TreeSpec,
    all_names,
    cli_env,
    part_files,
    read_link,
    read_regular,
)

RUNNER = Path(__file__).resolve().parents[1] / 'tools' / 'mover_variant.py'
BLKFLSBUF = 0x1261
LOAD_RUN_BLOCKS = 256           # one write of the loader: at most 1 MiB
FSCK_EVERY = 8                  # every 8th state checked (and each lose cut after a recovery) is fsck'd
TIMEOUT = int(os.environ.get("BLOCKSWEEP_RUN_TIMEOUT", "180"))


# ==========================================================================
# Crash states of a log, disk by disk
# ==========================================================================

@dataclasses.dataclass(frozen=True)
class Cut:
    """A crash after records[:pos] were issued; `mode` prefix, lose or subset."""

    pos: int
    mode: str
    seed: t.Optional[int] = None
    label: str = ''

    def describe(self) -> str:
        text = '%s at record %d' % (self.mode, self.pos)
        if self.seed is not None:
            text += ' (seed %d)' % self.seed
        return text + (' [%s]' % self.label if self.label else '')


def apply_record(blocks: dict, record: Record) -> None:
    if record.kind == WRITE:
        blockdev.apply_write(blocks, record.offset, record.data)
    elif record.kind == DISCARD:
        blockdev.apply_zero(blocks, record.offset, record.size)


class Cutter:
    """Crash states of `records` (forwards only: ask for increasing positions).

    Each disk has a volatile cache: its writes are durable once a flush of
    that disk is logged after them. `base`: the disks' content before the
    first record (durable)."""

    def __init__(self, records: t.Sequence[Record], disks: t.Sequence[str],
                 base: t.Optional[dict] = None):
        self.records = records
        self.disks = list(disks)
        self.durable = {d: dict((base or {}).get(d, {})) for d in self.disks}
        self.pending: dict[str, list[Record]] = {d: [] for d in self.disks}
        self.pos = 0

    def advance(self, pos: int) -> None:
        if pos < self.pos:
            raise ValueError('Cutter goes forwards only (at %d, asked %d)' % (self.pos, pos))
        for record in self.records[self.pos:pos]:
            if record.kind in (WRITE, DISCARD):
                self.pending[record.disk].append(record)
            elif record.kind == FLUSH:
                durable = self.durable[record.disk]
                for write in self.pending[record.disk]:
                    apply_record(durable, write)
                self.pending[record.disk] = []
        self.pos = pos

    def state(self, cut: Cut) -> dict[str, dict[int, bytes]]:
        """Each disk's blocks in crash state `cut` (do not modify them)."""
        self.advance(cut.pos)
        rng = random.Random(cut.seed) if cut.mode == 'subset' else None
        out = {}
        for disk in self.disks:
            pending = self.pending[disk]
            if cut.mode == 'lose' or not pending:
                out[disk] = self.durable[disk]
                continue
            blocks = dict(self.durable[disk])
            for write in pending:
                if rng is None or rng.random() < 0.5:
                    apply_record(blocks, write)
            out[disk] = blocks
        return out

    def final(self) -> dict[str, dict[int, bytes]]:
        """Every record applied: what the disks hold now."""
        return self.state(Cut(len(self.records), 'prefix'))


class LogTail:
    """The daemon's log, read on from where the last read stopped."""

    def __init__(self, dev: blockdev.BlockDev):
        self.dev = dev
        self.offset = len(LOG_MAGIC)
        self.names: dict[int, str] = {}
        self.disks: dict[str, int] = {}

    def read(self) -> list[Record]:
        """The records logged since the last read (indices from 0)."""
        self.dev.command('sync-log')
        with open(self.dev.log_path, 'rb') as handle:
            handle.seek(self.offset)
            raw = handle.read()
        view = memoryview(raw)
        pos, records = 0, []
        while pos + HEADER.size <= len(raw):
            kind, disk, mode, length, offset, size = HEADER.unpack_from(raw, pos)
            if pos + HEADER.size + length > len(raw):
                break
            payload = view[pos + HEADER.size:pos + HEADER.size + length]
            pos += HEADER.size + length
            if kind == ord('d'):
                self.names[disk] = bytes(payload).decode()
                self.disks[self.names[disk]] = size
                continue
            records.append(Record(len(records), kind, self.names.get(disk, '') if kind != MARK else '',
                                  offset, size, mode, payload))
        self.offset += pos
        return records


def mark_index(records: t.Sequence[Record], text: str) -> int:
    found = [r.index for r in records if r.kind == MARK and r.text == text]
    if not found:
        raise KeyError('no mark %r in the log' % text)
    return found[-1]


# ==========================================================================
# The journal of a crash state, read from a copy
# ==========================================================================

def _journal_copy(journal: Path) -> t.Optional[Path]:
    """The journal's files (database, WAL, rollback journal) copied to a
    scratch directory: a crash state may hold a hot rollback journal (a run
    killed while creating the journal) or a WAL, which SQLite recovers on
    open (writing); the copy is recovered, the state is left as the next run
    finds it."""
    if not journal.exists():
        return None
    scratch = Path(os.environ.get('BLOCKSWEEP_SCRATCH', '/dev/shm')) / ('blocksweep-journal-%d' % os.getpid())
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for suffix in ('', '-wal', '-journal'):
        source = Path(str(journal) + suffix)
        if source.exists():
            shutil.copyfile(source, scratch / ('journal.sqlite' + suffix))
    return scratch / 'journal.sqlite'


def _journal_query(journal: Path, sql: str) -> list[tuple]:
    copy = _journal_copy(journal)
    if copy is None:
        return []
    try:
        conn = sqlite3.connect(str(copy))
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if 'files' not in tables:
                return []
            return list(conn.execute(sql))
        finally:
            conn.close()
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def journal_rows(journal: Path) -> dict[str, dict[str, t.Any]]:
    """path -> {state, error} of every file row ({} without a journal)."""
    return {os.fsdecode(bytes(p)): {'state': s, 'error': e}
            for p, s, e in _journal_query(journal, 'SELECT path, state, error FROM files')}


def journal_dirs(journal: Path) -> dict[str, str]:
    return {os.fsdecode(bytes(p)): s for p, s in _journal_query(journal, 'SELECT path, state FROM dirs')}


# ==========================================================================
# What a sweep expects
# ==========================================================================

@dataclasses.dataclass
class Expect:
    """The tree, and what may be at the destination besides it.

    `before`: rel -> bytes at the destination name before the run (a
    pre-seeded copy or another file). `durable_before`: those were flushed
    before the run (else whatever of them a cut kept may be there). `kept`:
    rels whose source must stay (a conflict with on_conflict=fail); the
    destination keeps `before`."""

    spec: TreeSpec
    moves: bool = True
    before: dict[str, bytes] = dataclasses.field(default_factory=dict)
    durable_before: bool = True
    kept: set[str] = dataclasses.field(default_factory=set)
    ignore_dest: set[str] = dataclasses.field(default_factory=set)   # e.g. a nested mount's lost+found
    overwrite: bool = False     # on_conflict=overwrite: what was there is replaced

    def after_crash(self, layout: Layout) -> 'Expect':
        """What a run on this crash state must end with: a name that held
        something else before the run holds what the crash left there (a copy
        written without sync may be lost, or cut short: it then differs from
        its source and is a conflict, kept, unless on_conflict=overwrite)."""
        if not self.before:
            return self
        before, kept = {}, set()
        for rel in self.before:
            dst = read_regular(layout.dest / rel)
            if dst is None or dst == self.spec.files[rel].data:
                continue
            before[rel] = dst
            if not self.overwrite:
                kept.add(rel)
        return dataclasses.replace(self, before=before, durable_before=True, kept=kept)


def invariant(expect: Expect, layout: Layout) -> list[str]:
    """What must hold in every crash state (see the module doc)."""
    spec, problems = expect.spec, []
    rows = journal_rows(layout.journal())
    for rel, f in spec.files.items():
        src = read_regular(layout.src / rel)
        dst = read_regular(layout.dest / rel)
        row = rows.get(rel, {}).get('state')
        if src is not None and src != f.data:
            problems.append('%s: source content altered (%d bytes, expected %d)' % (rel, len(src), len(f.data)))
        if dst is not None and dst != f.data:
            earlier = expect.before.get(rel)
            foreign_ok = earlier is not None and src == f.data and row not in ('copied', 'done') and (
                dst == earlier or not expect.durable_before)
            if not foreign_ok:
                problems.append('%s: destination final name holds other content (%d bytes, expected %d)%s'
                                % (rel, len(dst), len(f.data), ' AND the source is gone' if src is None else ''))
        if src is None and dst != f.data:
            problems.append('%s: LOST (not at the source, %s at the destination)'
                            % (rel, 'nothing' if dst is None else '%d other bytes' % len(dst)))
    for rel, target in spec.symlinks.items():
        src_t, dst_t = read_link(layout.src / rel), read_link(layout.dest / rel)
        if src_t is not None and src_t != target:
            problems.append('%s: source link altered' % rel)
        if dst_t is not None and dst_t != target:
            problems.append('%s: destination link points to %r, not %r' % (rel, dst_t, target))
        if src_t is None and dst_t != target:
            problems.append('%s: symlink LOST' % rel)
    for rel, row in rows.items():
        state = row['state']
        if state not in ('pending', 'copying', 'copied', 'done', 'failed', 'skipped'):
            problems.append('%s: unknown journal state %r' % (rel, state))
        if state not in ('copied', 'done'):
            continue
        if rel in spec.files:
            whole = read_regular(layout.dest / rel) == spec.files[rel].data
            at_src = read_regular(layout.src / rel) is not None
        elif rel in spec.symlinks:
            whole = read_link(layout.dest / rel) == spec.symlinks[rel]
            at_src = read_link(layout.src / rel) is not None
        else:
            problems.append('%s: journal row %s for an entry the test never made' % (rel, state))
            continue
        if not whole:
            problems.append('%s: journal says %s but the destination is not whole' % (rel, state))
        if state == 'done' and expect.moves and at_src:
            problems.append('%s: journal says done but the source name still exists' % rel)
    return problems


def final_problems(expect: Expect, layout: Layout, run: t.Optional[CliRun] = None) -> list[str]:
    """The job is finished (``helpers_recovery.check_complete`` as a list): every
    entry at the destination with its content and metadata, nothing left at the
    source (move mode), no part files, every journal row done; `kept` files at
    their source and their destination unchanged, their rows failed."""
    spec, problems = expect.spec, list(invariant(expect, layout))
    if run is not None:
        result = run.result if run.stdout.strip() else {}
        want_complete = not expect.kept
        if run.returncode != (0 if want_complete else 1) or result.get('complete') is not want_complete:
            problems.append('the run: rc %s, complete %r, msg %r' % (run.returncode, result.get('complete'),
                                                                     result.get('msg')))
    for rel, f in spec.files.items():
        path = layout.dest / rel
        data = read_regular(path)
        if rel in expect.kept:
            if read_regular(layout.src / rel) != f.data:
                problems.append('%s: a conflict, but the source is not kept' % rel)
            earlier = expect.before[rel]
            if data != earlier and (expect.durable_before or not (data is None or earlier.startswith(data))):
                problems.append('%s: a conflict, but the destination was changed' % rel)
            continue
        if data != f.data:
            problems.append('%s: destination content wrong (%s)' % (rel, None if data is None else len(data)))
            continue
        st = os.lstat(path)
        got = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
        want = (f.mode, f.mtime_ns, f.uid, f.gid)
        if got != want:
            problems.append('%s: metadata (mode, mtime_ns, uid, gid) %r != %r' % (rel, got, want))
    for rel, target in spec.symlinks.items():
        if read_link(layout.dest / rel) != target:
            problems.append('%s: destination link wrong' % rel)
    for group in spec.hardlinks:
        inodes = {os.lstat(layout.dest / rel).st_ino for rel in group if os.path.lexists(layout.dest / rel)}
        if len(inodes) != 1:
            problems.append('hard-link group %r has %d inodes at the destination' % (group, len(inodes)))
    for rel, (mode, mtime_ns) in spec.dirs.items():
        try:
            st = os.lstat(layout.dest / rel)
        except FileNotFoundError:
            problems.append('dir %s: missing at the destination' % rel)
            continue
        if (stat.S_IMODE(st.st_mode), st.st_mtime_ns) != (mode, mtime_ns) and not expect.kept:
            problems.append('dir %s: (mode, mtime_ns) %r != %r'
                            % (rel, (oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns), (oct(mode), mtime_ns)))
    extra = {name for name in set(all_names(layout.dest)) - set(spec.files) - set(spec.symlinks) - set(spec.dirs)
             if not any(name == ign or name.startswith(ign + '/') for ign in expect.ignore_dest)}
    if extra:
        problems.append('unexpected names at the destination: %r' % sorted(extra))
    if expect.moves:
        left = set(all_names(layout.src)) - expect.kept - {
            d for d in spec.dirs if any(k.startswith(d + '/') for k in expect.kept)}
        if left:
            problems.append('left at the source: %r' % sorted(left))
    rows = journal_rows(layout.journal())
    not_done = {rel: row['state'] for rel, row in rows.items() if row['state'] != 'done' and rel not in expect.kept}
    if not_done:
        problems.append('journal rows not done: %r' % not_done)
    for rel in expect.kept:
        if rows.get(rel, {}).get('state') != 'failed':
            problems.append('%s: a conflict, journal row %r' % (rel, rows.get(rel)))
    if set(rows) != set(spec.files) | set(spec.symlinks):
        problems.append('journal rows %r != entries %r' % (sorted(rows), sorted(set(spec.files) | set(spec.symlinks))))
    if not expect.kept:
        dirs_not_done = {rel: s for rel, s in journal_dirs(layout.journal()).items() if s != 'done'}
        if dirs_not_done:
            problems.append('journal dirs not done: %r' % dirs_not_done)
    parts = part_files(layout.src, layout.dest)
    if parts:
        problems.append('part files left: %r' % parts)
    return problems


# ==========================================================================
# The bench: disks mounted at fixed paths, the mover, states
# ==========================================================================

@dataclasses.dataclass
class Config:
    """One sweep's configuration.

    `disks`: blockdev.Rig disks; `mounts`: (disk, path under base/run) in
    mount order; `src`, `dest`, `state`: paths under base/run; `variant`:
    mover_variant.py's variants for the swept run (and its recoveries)."""

    name: str
    disks: dict[str, t.Any]
    mounts: list[tuple[str, str]]
    src: str
    dest: str
    state: str
    params: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    variant: str = 'none'
    recover_variant: t.Optional[str] = None
    check: int = 40             # states checked (sampled; all with BLOCKSWEEP_FULL)
    recover: int = 6            # of which recovered and cut again
    mkfs_args: dict[str, t.Sequence[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    """A checked state and what was wrong in it."""

    index: int
    cut: Cut
    phase: str                  # 'state', 'recovery run', 'cut after recovery', 'cut during recovery'
    problems: list[str]


@dataclasses.dataclass
class Report:
    name: str
    seed: int
    flushes: int = 0
    records: int = 0
    states_total: int = 0       # states of the full plan
    checked: int = 0
    recovered: int = 0
    cuts_after_recovery: int = 0
    cuts_during_recovery: int = 0
    fscked: int = 0             # states whose filesystems were checked (fsck -n and the like)
    by_mode: dict[str, int] = dataclasses.field(default_factory=dict)
    violations: list[Outcome] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    run: t.Optional[CliRun] = None
    log_path: str = ''
    traced: dict[str, int] = dataclasses.field(default_factory=dict)   # what the swept run flushed (strace)

    def violating_states(self) -> int:
        return len({v.index for v in self.violations})

    def summary(self) -> str:
        return ('%s: %d flushes in the run (%s); %d of %d states checked (%s), %d recovered and cut again (%d cuts '
                'after, %d during recovery), %d fsck\'d; %d violating states; %.1f s; seed %d'
                % (self.name, self.flushes, ', '.join('%s %d' % kv for kv in sorted(self.traced.items())),
                   self.checked, self.states_total,
                   ', '.join('%s %d' % kv for kv in sorted(self.by_mode.items())), self.recovered,
                   self.cuts_after_recovery, self.cuts_during_recovery, self.fscked, self.violating_states(),
                   self.seconds,
                   self.seed))

    def details(self, limit: int = 8) -> str:
        lines = [self.summary(), 'log: %s' % self.log_path,
                 'a state as disk images: python tests/crash/blocksweep.py image %s --seed %d --state INDEX OUTDIR'
                 % (self.log_path, self.seed)]
        for v in self.violations[:limit]:
            lines.append('  state #%d %s, %s:' % (v.index, v.cut.describe(), v.phase))
            lines.extend('    ' + p for p in v.problems[:6])
        return '\n'.join(lines)

    def as_json(self) -> dict:
        return {'name': self.name, 'seed': self.seed, 'flushes': self.flushes, 'records': self.records,
                'states_total': self.states_total, 'checked': self.checked, 'recovered': self.recovered,
                'cuts_after_recovery': self.cuts_after_recovery, 'cuts_during_recovery': self.cuts_during_recovery,
                'fscked': self.fscked,
                'by_mode': self.by_mode, 'violating_states': self.violating_states(),
                'seconds': round(self.seconds, 1), 'log': self.log_path, 'traced': self.traced,
                'violations': [[v.index, v.cut.describe(), v.phase, v.problems[:3]] for v in self.violations[:20]]}


def full_mode() -> bool:
    return os.environ.get('BLOCKSWEEP_FULL', '') not in ('', '0')


def base_seed() -> int:
    return int(os.environ.get('BLOCKSWEEP_SEED', '11'))


def plan_states(flushes: t.Sequence[int], end: int, seed: int) -> list[Cut]:
    """Every state of a run (three a flush, two at its end), in log order."""
    cuts = []
    for f in flushes:
        cuts.append(Cut(f, 'lose', label='before flush %d' % f))
        cuts.append(Cut(f, 'subset', seed=seed * 1_000_003 + f, label='before flush %d' % f))
        cuts.append(Cut(f + 1, 'prefix', label='after flush %d' % f))
    cuts.append(Cut(end, 'lose', label='end of the run'))
    cuts.append(Cut(end, 'subset', seed=seed * 1_000_003 + end, label='end of the run'))
    return cuts


def sample(cuts: list[Cut], check: int, recover: int, seed: int) -> tuple[list[int], set[int]]:
    """Indices of the states to check, and of those to recover: the two end
    states always, the rest a seeded sample spread over the run."""
    total = len(cuts)
    chosen_only = os.environ.get('BLOCKSWEEP_STATES')
    if chosen_only:
        chosen = sorted({int(i) for i in chosen_only.split(',') if i.strip()})
        return chosen, set(chosen)
    if full_mode():
        return list(range(total)), set(range(total)) if recover > 0 else set()
    rng = random.Random(seed)
    ends = {total - 2, total - 1}
    rest = [i for i in range(total) if i not in ends]
    picked = sorted(set(rng.sample(rest, min(len(rest), max(0, check - 2)))) | ends)
    # recovered: spread over the run (every k-th of the picked, from a seeded start)
    middle = [i for i in picked if i not in ends]
    step = max(1, len(middle) // max(1, recover - 1))
    if recover <= 0:
        return picked, set()
    recovered = set(middle[rng.randrange(step)::step][:recover - 1]) | {total - 1}
    return picked, recovered


class Bench:
    """The disks of a configuration on one blockdev rig, mounted at fixed paths."""

    def __init__(self, rig: blockdev.Rig, config: Config):
        self.rig = rig
        self.config = config
        self.run_dir = rig.base / 'run'
        self.mounts = [(disk, self.run_dir / rel) for disk, rel in config.mounts]
        self.layout = Layout('blocksweep', self.run_dir / config.src, self.run_dir / config.dest,
                             self.run_dir / config.state)
        self.mounted: list[Path] = []
        self.state_loops: dict[str, blockdev.LoopDevice] = {}
        self.tail = LogTail(rig.dev)
        for disk in rig.filesystems:
            rig.unmount(disk)
        self.mount_devices(rig.devices)

    def write_tree(self, spec: TreeSpec) -> None:
        """The source tree, made durable (a syncfs of every disk)."""
        from helpers_recovery import materialize  # pylint: disable=import-outside-toplevel
        self.layout.src.mkdir(parents=True, exist_ok=True)
        materialize(spec, self.layout.src)
        self.sync()

    # -- mounts --------------------------------------------------------------

    def mount_devices(self, devices: dict[str, str]) -> None:
        for disk, path in self.mounts:
            options = ['nouuid'] if self.rig.fstypes[disk] == 'xfs' else []
            blockdev.mount(devices[disk], path, self.rig.fstypes[disk], options)
            self.mounted.append(path)

    def unmount(self) -> None:
        while self.mounted:
            blockdev.umount(self.mounted.pop())

    @contextmanager
    def state_mounted(self, state: dict[str, dict[int, bytes]],
                      fsck: t.Optional[list[str]] = None) -> t.Iterator[None]:
        """Crash state `state` written to images and mounted at the run's paths
        (the live disks must be unmounted). With `fsck` (a list), each
        filesystem is checked read-only once unmounted (its journal or log
        replayed by the mount) and what the checker reports is appended."""
        assert not self.mounted, 'the live disks are mounted'
        images = blockdev.write_images(state, self.tail.disks, self.rig.state_dir)
        try:
            self.mount_devices({disk: self._state_loop(disk, images[disk]) for disk, _path in self.mounts})
            yield
            self.unmount()
            if fsck is not None:
                for disk, _path in self.mounts:
                    fsck.extend(check_filesystem(self.rig.fstypes[disk], images[disk]))
        finally:
            self.unmount()

    def _state_loop(self, disk: str, image: Path) -> str:
        """The loop device of `disk`'s state image: attached once, and for each
        state the image is rewritten in place (same path, same size) and the
        device's cache dropped (BLKFLSBUF), so what is mounted is the new state."""
        loop = self.state_loops.get(disk)
        if loop is None:
            loop = self.state_loops[disk] = blockdev.LoopDevice(image, self.rig.loop_direct_io)
        else:
            fcntl.ioctl(loop.fd, BLKFLSBUF)
        return loop.path

    def close(self) -> None:
        """Unmount, and detach the state images' loop devices."""
        self.unmount()
        while self.state_loops:
            self.state_loops.popitem()[1].detach()

    def sync(self) -> None:
        """syncfs of every mounted disk: the setup is durable (not a step under test)."""
        for path in self.mounted:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if blockdev._libc.syncfs(fd) != 0:     # pylint: disable=protected-access
                    raise OSError('syncfs %s failed' % path)
            finally:
                os.close(fd)

    def load(self, state: dict[str, dict[int, bytes]], current: dict[str, dict[int, bytes]]) -> int:
        """Write crash state `state` onto the live disks (they hold `current`),
        flushed: what differs, through the loop devices (logged like any write).
        Returns the blocks written."""
        assert not self.mounted, 'the live disks are mounted'
        written = 0
        for disk, device in self.rig.devices.items():
            want, have = state[disk], current[disk]
            numbers = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
            if not numbers:
                continue
            fd = os.open(device, os.O_RDWR | os.O_DIRECT)
            try:
                run: list[int] = []
                for number in numbers + [None]:
                    if run and (number is None or number != run[-1] + 1 or len(run) >= LOAD_RUN_BLOCKS):
                        buf = mmap.mmap(-1, len(run) * BLOCK)
                        for block in run:
                            buf.write(want.get(block, ZERO_BLOCK))
                        if os.pwritev(fd, [buf], run[0] * BLOCK) != len(run) * BLOCK:
                            raise OSError('short write loading %s' % disk)
                        buf.close()
                        written += len(run)
                        run = []
                    if number is not None:
                        run.append(number)
                os.fsync(fd)
                fcntl.ioctl(fd, BLKFLSBUF)
            finally:
                os.close(fd)
        return written

    # -- the mover -----------------------------------------------------------

    def params(self, **extra: t.Any) -> dict[str, t.Any]:
        values = self.layout.params(**self.config.params)
        values.update(extra)
        return values

    def run_mover(self, variant: t.Optional[str] = None, timeout: float = TIMEOUT, trace: t.Optional[Path] = None,
                  **extra: t.Any) -> CliRun:
        """The mover in a child process (its own process group: its worker
        processes too). A run that does not end within `timeout` fails the test
        with the state and kernel stack of each of its processes."""
        started = time.monotonic()
        prefix = []
        if trace is not None:
            prefix = [shutil.which('strace') or 'strace', '-f', '-qq', '-y', '--seccomp-bpf',
                      '-e', 'trace=syncfs,fdatasync,fsync', '-o', str(trace)]
        argv = prefix + [sys.executable, str(RUNNER), variant or self.config.variant, json.dumps(self.params(**extra))]
        # pylint: disable-next=consider-using-with
        proc = subprocess.Popen(argv, env=cli_env(extra={'PYTHONFAULTHANDLER': '1'}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            where = describe_group(proc.pid)
            kill_group(proc.pid)
            out, err = proc.communicate()
            raise AssertionError('the mover did not end within %d s (variant %s); its processes:\n%s\nstderr: %s'
                                 % (timeout, variant or self.config.variant, where, err[-2000:])) from None
        finally:
            kill_group(proc.pid)        # workers left behind by a parent that died
        return CliRun(proc.returncode, out, err, time.monotonic() - started)


FSCK = {
    'ext4': ['e2fsck', '-f', '-n'],
    'xfs': ['xfs_repair', '-n', '-f'],
    'btrfs': ['btrfs', 'check', '--readonly'],
}


def check_filesystem(fstype: str, image: Path) -> list[str]:
    """The filesystem checker's complaints about an unmounted image (read-only)."""
    cmd = FSCK[fstype]
    if shutil.which(cmd[0]) is None:
        return []
    proc = subprocess.run(cmd + [str(image)], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode == 0:
        return []
    return ['%s %s: exit %d: %s' % (fstype, image.name, proc.returncode,
                                    ' | '.join((proc.stdout + proc.stderr).strip().splitlines()[-6:]))]


def flushes_traced(trace: Path) -> dict[str, int]:
    """Counts of what a run flushed (strace -y): syncfs calls, fdatasync/fsync
    of part files, of other files, of directories."""
    counts = {'syncfs': 0, 'part': 0, 'file': 0, 'dir': 0}
    for line in trace.read_text(errors='replace').splitlines():
        for name in ('syncfs', 'fdatasync', 'fsync'):
            at = line.find(' %s(' % name)
            if at < 0:
                at = line.find('<... %s resumed>' % name)
                if at >= 0:
                    continue            # counted at its start
            if at < 0:
                continue
            path = line[line.find('<', at) + 1:line.find('>', at)] if '<' in line[at:] else ''
            if name == 'syncfs':
                counts['syncfs'] += 1
            elif path.endswith('.part'):
                counts['part'] += 1
            elif os.path.isdir(path):
                counts['dir'] += 1
            else:
                counts['file'] += 1
            break
    return counts


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry, encoding='utf-8', errors='replace') as handle:
                    fields = handle.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def describe_group(pgid: int) -> str:
    """State, wait channel and kernel stack of every thread of every process of a group."""
    lines = []
    for pid in _group_members(pgid):
        try:
            tids = sorted(int(tid) for tid in os.listdir('/proc/%d/task' % pid))
        except OSError:
            tids = [pid]
        for tid in tids:
            info = []
            for name in ('status', 'wchan', 'stack'):
                try:
                    with open('/proc/%d/task/%d/%s' % (pid, tid, name), encoding='utf-8', errors='replace') as handle:
                        text = handle.read()
                except OSError as exc:
                    text = str(exc)
                if name == 'status':
                    text = ' '.join(line for line in text.splitlines() if line.startswith(('State', 'PPid')))
                info.append(text.strip())
            lines.append('pid %d%s: %s' % (pid, '' if tid == pid else ' thread %d' % tid, '\n    '.join(info)))
    members = {str(pid) for pid in _group_members(pgid)}
    try:
        with open('/proc/locks', encoding='utf-8') as handle:
            held = [line.strip() for line in handle if len(line.split()) > 4 and line.split()[4] in members]
    except OSError:
        held = []
    if held:
        lines.append('their locks (/proc/locks): ' + '; '.join(held))
    return '\n'.join(lines) or '(none left)'


def kill_group(pgid: int) -> None:
    """SIGKILL the mover's process group (this test's child and its workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


Setup = t.Callable[[Bench], None]


@contextmanager
def bench_of(rig_factory: t.Callable[..., blockdev.Rig], config: Config) -> t.Iterator[Bench]:
    """A Bench on a new rig (blockdev_rig closes the rig); faults healed and
    the disks unmounted on the way out."""
    rig = rig_factory(config.disks, mkfs_args=config.mkfs_args)
    bench = Bench(rig, config)
    try:
        yield bench
    finally:
        rig.dev.heal()
        bench.close()


def sweep(rig_factory: t.Callable[..., blockdev.Rig], config: Config, expect: Expect,
          setup: t.Optional[Setup] = None, prepare: t.Optional[Setup] = None) -> Report:
    """Record one run of the mover and check a sample of its crash states.

    `prepare(bench)`: after the tree is durable, before the mark ``start``
    (e.g. cp without sync); `setup`: an earlier run (e.g. killed at a step),
    also before ``start``."""
    seed = zlib.crc32(config.name.encode()) ^ base_seed()
    report = Report(config.name, seed)
    started = time.monotonic()
    with bench_of(rig_factory, config) as bench:
        report.log_path = str(bench.rig.dev.log_path)
        _record(bench, expect, prepare, setup, report)
        _sweep_states(bench, expect, report, seed)
    report.seconds = time.monotonic() - started
    out = os.environ.get('BLOCKSWEEP_REPORT')
    if out:
        with open(out, 'a', encoding='utf-8') as handle:
            handle.write(json.dumps(report.as_json()) + '\n')
    print(report.summary())
    return report


def _record(bench: Bench, expect: Expect, prepare: t.Optional[Setup], setup: t.Optional[Setup],
            report: Report) -> None:
    for rel, data in expect.before.items():
        if expect.durable_before:
            path = bench.layout.dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    bench.write_tree(expect.spec)
    if prepare is not None:
        prepare(bench)
    if setup is not None:
        setup(bench)
    trace = bench.rig.base / 'run.trace'
    bench.rig.mark('start')
    report.run = bench.run_mover(trace=trace if shutil.which('strace') else None)
    bench.rig.mark('end')
    if trace.exists():
        report.traced = flushes_traced(trace)


def _sweep_states(bench: Bench, expect: Expect, report: Report, seed: int) -> None:
    config = bench.config
    bench.unmount()
    records = bench.tail.read()
    disks = list(bench.tail.disks)
    start, end = mark_index(records, 'start'), mark_index(records, 'end')
    flushes = [r.index for r in records[start + 1:end] if r.kind == FLUSH]
    report.flushes, report.records = len(flushes), end - start
    cuts = plan_states(flushes, end, seed)
    report.states_total = len(cuts)
    checked, recovered = sample(cuts, config.check, config.recover, seed)
    cutter = Cutter(records, disks)
    current = Cutter(records, disks).final()
    for index in checked:
        cut = cuts[index]
        state = cutter.state(cut)
        report.checked += 1
        report.by_mode[cut.mode] = report.by_mode.get(cut.mode, 0) + 1
        is_end = cut.label == 'end of the run'
        run_complete = report.run is not None and report.run.returncode == 0 and \
            report.run.stdout.strip() and report.run.result.get('complete') is True
        if index not in recovered:
            fsck: t.Optional[list[str]] = [] if report.checked % FSCK_EVERY == 0 else None
            with bench.state_mounted(state, fsck):
                problems = final_problems(expect, bench.layout) if is_end and run_complete \
                    else invariant(expect, bench.layout)
            if fsck is not None:
                report.fscked += 1
                problems += fsck
            if problems:
                report.violations.append(Outcome(index, cut, 'state', problems))
            continue
        current = _recover(bench, expect, report, index, cut, state, current, seed,
                           final=is_end and run_complete)


def _recover(bench: Bench, expect: Expect, report: Report, index: int, cut: Cut, state: dict,
             current: dict, seed: int, final: bool) -> dict:
    """Load the state onto the live disks, check it, run the mover again,
    cut at its end and inside it. Returns what the live disks hold after."""
    config = bench.config
    bench.load(state, current)
    bench.tail.read()                   # the loader's own writes: part of the state
    bench.rig.mark('loaded %d' % index)
    bench.mount_devices(bench.rig.devices)
    problems = final_problems(expect, bench.layout) if final else invariant(expect, bench.layout)
    if problems:
        report.violations.append(Outcome(index, cut, 'state', problems))
    expect = expect.after_crash(bench.layout)
    bench.rig.mark('recovery %d' % index)
    run = bench.run_mover(config.recover_variant)
    bench.rig.mark('recovered %d' % index)
    problems = final_problems(expect, bench.layout, run)
    bench.unmount()
    records = bench.tail.read()
    report.recovered += 1
    if problems:
        report.violations.append(Outcome(index, cut, 'recovery run', problems + [run.describe()[-600:]]))
    begin, done = mark_index(records, 'recovery %d' % index), mark_index(records, 'recovered %d' % index)
    inside = [r.index for r in records[begin + 1:done] if r.kind == FLUSH]
    rng = random.Random(seed * 7919 + index)
    cuts = []
    if inside:
        f = rng.choice(inside)
        cuts.append((Cut(f, 'subset', seed=rng.randrange(1 << 30), label='during recovery'), False))
    cuts.append((Cut(done, 'lose', label='after recovery'), True))
    cuts.append((Cut(done, 'subset', seed=rng.randrange(1 << 30), label='after recovery'), True))
    cutter = Cutter(records, list(bench.tail.disks), base=state)
    for again, after in cuts:
        fsck: t.Optional[list[str]] = [] if again.mode == 'lose' else None
        with bench.state_mounted(cutter.state(again), fsck):
            problems = final_problems(expect, bench.layout) if after else invariant(expect, bench.layout)
        if fsck is not None:
            report.fscked += 1
            problems += fsck
        if after:
            report.cuts_after_recovery += 1
        else:
            report.cuts_during_recovery += 1
        if problems:
            report.violations.append(Outcome(index, again, 'cut %s (of state #%d %s)'
                                             % (again.label, index, cut.describe()), problems))
    return Cutter(records, list(bench.tail.disks), base=state).final()


# ==========================================================================
# Trees
# ==========================================================================

def sweep_tree(small_files: int = 12, big_size: int = 200 * 1024) -> TreeSpec:
    """``helpers_recovery.crash_tree_spec`` (a file larger than 4 x a 16 KiB
    buffer, symlinks, a hard-link pair across directories, nested directories,
    an empty file, a file of another owner) plus `small_files` small files
    over two directories and an empty directory."""
    from helpers_recovery import BASE_NS, crash_tree_spec, pseudo_random  # pylint: disable=import-outside-toplevel
    spec = crash_tree_spec(big_size)
    spec.dirs['emptydir'] = (0o750, BASE_NS + 400)
    spec.dirs['many'] = (0o755, BASE_NS + 500)
    spec.dirs['many/sub'] = (0o700, BASE_NS + 600)
    for index in range(small_files):
        rel = 'many/%sf%02d' % ('sub/' if index % 3 == 2 else '', index)
        spec.files[rel] = FileSpec(pseudo_random(1000 + 700 * index, 100 + index), 0o644, BASE_NS + 700 + index)
    return spec


def cp_without_sync(src: Path, dest: Path, rels: t.Iterable[str]) -> dict[str, bytes]:
    """``cp`` itself (no sync, no metadata kept) of each rel from `src` to
    `dest` (parents made as mkdir -p does); rel -> the bytes copied."""
    copied = {}
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(['cp', str(src / rel), str(dest / rel)], check=True)
        copied[rel] = (src / rel).read_bytes()
    return copied


def which(tool: str) -> t.Optional[str]:
    return shutil.which(tool)


# ==========================================================================
# Reproducing a state from a kept log
# ==========================================================================

def states_of_log(path: os.PathLike | str, seed: int) -> tuple[blockdev.Log, list[Cut]]:
    """The swept run's states, exactly as the sweep listed them (they depend
    only on the log and the seed the sweep printed)."""
    log = blockdev.Log.read(path)
    start, end = mark_index(log.records, 'start'), mark_index(log.records, 'end')
    return log, plan_states([r.index for r in log.records[start + 1:end] if r.kind == FLUSH], end, seed)


def main(argv: list[str]) -> int:
    import argparse  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(prog='blocksweep.py', description=(
        'List the crash states of a sweep\'s log, or write one as disk images (to mount and look at, '
        'e.g. mount -o loop,ro src.img /mnt). The seed is the one the sweep printed.'))
    sub = parser.add_subparsers(dest='command', required=True)
    states = sub.add_parser('states', help='list the states of the swept run')
    image = sub.add_parser('image', help='write the disk images of one state')
    for each in (states, image):
        each.add_argument('log', help='the blockdev.log the sweep named')
        each.add_argument('--seed', type=int, required=True, help='the seed the sweep printed')
    image.add_argument('--state', type=int, required=True, help='the state index the sweep named')
    image.add_argument('outdir', help='where to write <disk>.img')
    args = parser.parse_args(argv)
    log, cuts = states_of_log(args.log, args.seed)
    if args.command == 'states':
        for index, cut in enumerate(cuts):
            print('%5d %s' % (index, cut.describe()))
        return 0
    if not 0 <= args.state < len(cuts):
        parser.error('state %d: the run has states 0 to %d' % (args.state, len(cuts) - 1))
    Path(args.outdir).mkdir(parents=True, exist_ok=True)
    images = blockdev.write_images(Cutter(log.records, list(log.disks)).state(cuts[args.state]), log.disks,
                                   args.outdir)
    for disk, path in images.items():
        print('%s: %s' % (disk, path))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
