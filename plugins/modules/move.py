#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: move
short_description: Move a directory tree or a file without ever losing a byte
version_added: 0.1.0
description:
  - Moves (or copies, or verifies) a directory tree or one file from O(src) to O(dest) on the managed host,
    so that a crash, a kill or a power cut at any instant leaves every file at its source, or whole and
    verified at its destination, and a rerun finishes the job.
  - "Across filesystems, each file is copied to C(.<name>.<job>.part) beside its destination, flushed to disk,
    read back from disk and compared by hash with the source, renamed into place; the destination directory
    is fsynced, the move is recorded in a SQLite journal (WAL, C(synchronous=FULL)), and only then is the
    source removed and its directory fsynced."
  - On one filesystem each entry is renamed, and both directories are fsynced before the journal records it.
  - The move stays on the filesystem of O(src), like C(find -xdev) or C(rsync -x). A mount point inside O(src)
    (another filesystem, a bind mount, a btrfs subvolume) is not entered and left at the source, its parent
    directories with it; each one is recorded in the journal, reported in RV(mount_points) and
    RV(stats.mounts_skipped), and never keeps the job from completing. See O(cross_filesystems).
  - Progress is kept in a journal under O(state_dir), so a rerun after an interruption resumes (a large file
    from its last checkpoint) and a rerun after success changes nothing.
  - "A rerun with other options that decide what the job takes (O(special_files), O(on_conflict), O(exclude),
    O(cross_filesystems)) applies them to what earlier runs decided: every entry they skipped, and every entry
    that failed (quarantined too), is decided again; entries the earlier listing queued that the new options leave
    out (below an excluded name, inside a mount point no longer entered) are forgotten and stay at the source;
    the source is listed again from its root, so entries the new options bring in are found. What was already
    moved stays moved. The options are recorded in the journal; the same options again change nothing."
  - A file that fails (verification mismatch, I/O error, changed while copied) keeps its source, is recorded
    with its reason and attempt count, and is quarantined after O(max_attempts) attempts. The task fails when
    any file failed, and still returns the whole result.
  - Use M(durable.mover.move_info) to read a job's progress while it runs.
author:
  - Durable Mover Maintainers (@durable-mover)
requirements:
  - Python 3.9 or newer on the managed host, standard library only.
  - The C(blake3) Python package on the managed host for BLAKE3 hashing (optional; SHA-256 is used without it).
extends_documentation_fragment: []
attributes:
  check_mode:
    support: full
    description: Reports what would move (files, bytes, renames, copies, conflicts) and changes nothing, not even the journal.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems with C(fsync) semantics.
  idempotent:
    support: full
    description: A rerun after a complete move reports C(changed=false) and RV(stats.files_moved=0).
  safe_file_operations:
    support: full
    description: Files are written under a temporary name, flushed, verified and renamed atomically.
options:
  src:
    description:
      - The directory tree (its contents are moved; the directory itself is kept, empty) or the one file to move.
    type: path
    required: true
  dest:
    description:
      - The destination directory (created if missing). When O(src) is a file, an existing directory receives
        the file under its own name; any other path is the new name of the file.
      - Must not be inside O(src), and O(src) must not be inside it (real paths and device/inode are compared,
        so symbolic links and bind mounts are seen through).
      - Must not be reachable inside O(src) through any mount below O(src) (a bind mount of O(dest), of a
        directory above it, or its filesystem mounted again), whether or not the move would enter it; such a
        job is refused before anything is touched. The same holds for O(state_dir).
      - Directories the move creates for a tree (O(dest) itself and those below it) are made with mode 0700 and
        get their source's mode when the job's last file is in place, so a run that stops half-way never leaves a
        private directory open to others. Directories created above O(dest), and for one file, are 0755. Without
        V(mode) in O(preserve), all are 0755 (less the umask).
    type: path
    required: true
  mode:
    description:
      - V(move) removes each source after its copy is durable and verified.
      - V(copy) keeps the sources.
      - V(verify) compares the destination with the source (and with the hashes in the journal) and changes nothing.
        Every file and symbolic link is counted once. A file still at its source is compared with its destination,
        both hashed; a file whose source is gone is compared with the hash the journal recorded, a symbolic link
        with the digest of its target. Destinations are read from the device (C(O_DIRECT)).
      - Files with nothing to compare with (moved by a rename on one filesystem, which records no hash of the
        content; moved with O(hash=none), which records only sizes) are checked for type and size and reported in
        RV(unverifiable). They do not fail the task, but RV(complete) is true in verify mode only when every file
        was verified.
    type: str
    choices: [move, copy, verify]
    default: move
  hash:
    description:
      - The hash that proves a copy equals its source.
      - V(auto) uses V(blake3) when the C(blake3) package is importable, else V(sha256).
      - V(none) compares sizes only.
    type: str
    choices: [auto, blake3, sha256, none]
    default: auto
  verify_readback:
    description:
      - Read each copy back from the device after it is flushed and compare its hash with the source's, with
        C(O_DIRECT), past the page cache; a batch's one-page files by a read queued after their cached page was
        dropped and checked gone (C(RWF_NOWAIT)).
      - A file whose read-back cannot reach the device (its data kept inline in the filesystem's metadata, as
        ext4 C(inline_data) and btrfs do for small files, or a filesystem that refuses C(O_DIRECT)) is still
        compared, and is named in RV(readback_from_cache).
      - An identical file found at the destination is flushed and read back the same way before its source is
        removed (even when false, it is compared through the page cache after its flush).
      - When false, the hash is computed while copying only, which catches read errors of the source but not
        what the destination disk stored.
    type: bool
    default: true
  buffer_size:
    description:
      - Read and write buffer per worker, in bytes or a human size such as V(16M) or V(1GiB) (binary units).
      - Files larger than four buffers are copied by a pipeline (read, write and flush, read-back overlapped)
        in chunks of at most 1 MiB, which keeps the three stages busy.
    type: str
    default: 16M
  checkpoint_size:
    description:
      - A large copy is flushed to disk and its offset recorded in the journal every this many bytes, so a
        killed copy resumes from its last checkpoint. V(0) disables checkpoints.
    type: str
    default: 256M
  workers:
    description:
      - Files copied in parallel where each file is flushed on its own (destinations without a trusted
        C(syncfs), such as NFS, FUSE or tmpfs), so that their flushes overlap.
      - On ext4, xfs and btrfs a batch of small files is flushed at once and copies run one at a time,
        which measured faster; a large file is always copied by an overlapped pipeline of its own.
    type: int
    default: 4
  processes:
    description:
      - Worker processes that share the job's files, each with its own batches, flushes and journal
        commits. Small files cost CPU for every file, and one process uses one core.
      - The workers start as soon as the scan has found a batch (256 files) for each, while the scan goes on;
        the names of a hard-linked file wait for the end of the scan (another name may still be found).
      - By default one per CPU this host lets the module use, at most 4; fewer when the job holds fewer
        than that many batches (256 files each) of work, and one for a single-file job.
      - A worker never outlives the module (it is killed with it); a worker that dies is reported as an
        error and its files are completed by the next run.
    type: int
  state_dir:
    description:
      - Directory that holds each job's journal and lock, in a subdirectory named after the job.
      - Must not be inside O(src), nor reachable inside it through a mount.
    type: path
    default: /var/lib/durable-mover
  job_id:
    description:
      - Name of the job (letters, digits, C(.), C(_), C(-)). Derived from the real paths of O(src) and O(dest) when not given.
      - A journal that belongs to another O(src)/O(dest) pair is refused.
    type: str
  max_attempts:
    description:
      - Attempts per file (one per run) before it is quarantined.
    type: int
    default: 3
  retry_failed:
    description:
      - Give quarantined files another attempt in this run.
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another run of the same job to finish. V(0) fails at once, naming the pid that holds the lock.
    type: float
    default: 0
  on_conflict:
    description:
      - What to do when the destination already holds a different file under the same name. A destination
        with identical content always counts as already moved.
      - V(fail) keeps the source and records the conflict as a failure; V(skip) keeps the source and records it
        as skipped; V(overwrite) replaces the destination.
      - An entry another process creates under the destination name while the file is being moved is never
        replaced (the final rename uses C(RENAME_NOREPLACE)); it is a conflict like one found before, unless
        V(overwrite).
    type: str
    choices: [fail, skip, overwrite]
    default: fail
  preserve:
    description:
      - Which metadata survives the move. Extended attributes include POSIX ACLs, file capabilities and SELinux
        labels.
      - Set-id and sticky bits are kept only where the owner is. A copy that cannot have its source's owner and group
        (a run as a user other than root, or without V(owner)) gets the source's mode without them, as C(cp -a)
        does; see RV(stats.setid_cleared).
      - Without V(hardlinks), every name of a hard-link group becomes its own file at the destination.
    type: list
    elements: str
    choices: [owner, mode, times, xattrs, hardlinks]
    default: [owner, mode, times, xattrs, hardlinks]
  special_files:
    description:
      - FIFOs and device nodes. V(skip) leaves them at the source, logged and reported; V(recreate) makes them
        anew at the destination (their owner, mode and times are set through the new node's own file descriptor,
        never through a name another process could have replaced). Sockets are always skipped.
    type: str
    choices: [skip, recreate]
    default: skip
  remove_empty_dirs:
    description:
      - Remove source directories left empty by the move. Defaults to true in V(move) mode.
    type: bool
  exclude:
    description:
      - Glob patterns of entries to leave alone. A pattern with a C(/) matches the path relative to O(src),
        any other pattern matches the name (an excluded directory is not entered).
    type: list
    elements: str
    default: []
  cross_filesystems:
    description:
      - With V(false), a mount point inside O(src) is not entered (like C(find -xdev)); what is mounted there
        stays as it is, and so do the directories above it. A mount point is a directory whose device differs from
        its parent's (another filesystem, or a btrfs subvolume), or any entry whose path is in the mount table
        (C(/proc/self/mountinfo); a bind mount of the same filesystem keeps the device number).
      - With V(true), what is inside a directory mount point is moved too, and the mount point directory itself
        is kept (never removed, even with O(remove_empty_dirs)).
      - Either way, a mount point that is not a directory (a file mounted over a file) is left at the source; it
        can be neither removed nor renamed while mounted.
      - Check mode, V(verify) and M(durable.mover.preflight) follow the same rule.
    type: bool
    default: false
  audit_log:
    description:
      - A file on the managed host that receives one JSON line per event (file moved, failed, skipped, ...).
    type: path
  max_failures_reported:
    description:
      - At most this many failures are listed in RV(failures).
    type: int
    default: 100
  prepared:
    description:
      - The token M(durable.mover.preflight) returned with O(durable.mover.preflight#module:prepare=true) in
        RV(durable.mover.preflight#module:findings.prepared), after it listed the source into this job's journal.
        When the journal still holds that token with the same O(exclude), O(special_files), O(on_conflict) and
        O(cross_filesystems), the move does not list the source again and moves what the journal holds; files
        created at the source since the preflight are left for the next run. Any other value (a run or another
        preflight came in between, other options) is ignored, and the move lists the source as without it.
    type: str
  preflight:
    description:
      - Check the job first, as M(durable.mover.preflight) with O(durable.mover.preflight#module:prepare=true)
        does, in the same module run (the M(durable.mover.migrate) role uses this for a host with one job, so that
        a small job costs one module run). Its findings are returned in RV(preflight).
      - When the preflight finds a problem, nothing moves and the task fails with the problems in its message.
      - When the job is finished and nothing is new at its source, the journal's answer is returned and nothing
        runs (the task is not changed).
      - When a run of the job holds its lock, when the async job id file O(preflight.marker) exists, or when the
        files or bytes still to move exceed O(preflight.max_files) or O(preflight.max_bytes), nothing moves;
        RV(deferred) says why, and RV(preflight) holds the token (its C(findings.prepared)) for the move
        that runs next (O(prepared)), e.g. as an async job.
      - A job larger than these bounds is counted only until that is known. When the destination has room for
        all that the source's filesystem holds (from statvfs; an ext2, ext3 or ext4 source, O(cross_filesystems)
        off and O(preserve) keeping hard links, so the tree cannot take more), the source is not listed here;
        C(findings.larger) has what was counted, C(findings.space) that bound (C(upper_bound) true), there is no
        token, and the move that runs next lists the source itself, its workers copying meanwhile. Otherwise the
        source is listed and counted exactly, as above.
      - Otherwise the job is moved at once, as with O(prepared) set to that token.
      - In check mode the checks are made read-only, then the plan is returned; with O(mode=verify) the checks
        are made, then the verification runs.
    type: dict
    suboptions:
      max_files:
        description: The most files still to move for which the job moves in this run; V(-1) for no bound.
        type: int
        default: -1
      max_bytes:
        description: The most bytes still to move for which the job moves in this run; V(-1) for no bound.
        type: int
        default: -1
      marker:
        description: A file whose existence means that an async run of this job may still be going (RV(deferred=running)).
        type: path
notes:
  - Durability never depends on C(sync) or C(syncfs); every file and directory is flushed with C(fsync) or C(fdatasync).
  - Part files (C(.<name>.<job>.part)) that this job left behind (a killed run) are resumed or removed; those of
    other jobs are never removed (their own job removes them), nor is any name the journal records as moved.
  - On SIGTERM or SIGINT the file in hand is finished or rolled back, the journal is committed and the result
    says RV(interrupted=true).
seealso:
  - module: durable.mover.move_info
"""

EXAMPLES = r"""
- name: Move a data directory to another disk
  durable.mover.move:
    src: /srv/old-disk/data
    dest: /srv/new-disk/data

- name: Copy with SHA-256, keep the sources, skip existing different files
  durable.mover.move:
    src: /srv/data
    dest: /mnt/backup/data
    mode: copy
    hash: sha256
    on_conflict: skip
    exclude:
      - "*.tmp"
      - cache/*

- name: Verify that the destination matches
  durable.mover.move:
    src: /srv/data
    dest: /mnt/backup/data
    mode: verify

- name: Move one file to a new name, with an audit log
  durable.mover.move:
    src: /srv/export/dump.sql
    dest: /srv/archive/dump-2026.sql
    audit_log: /var/log/durable-mover.jsonl
"""

RETURN = r"""
preflight:
  description:
    - With O(preflight), what the checks found, as M(durable.mover.preflight) returns it.
  returned: when O(preflight) is set
  type: dict
  contains:
    ok:
      description: True when no problem was found.
      type: bool
    problems:
      description: Each problem found, one sentence each.
      type: list
      elements: str
    findings:
      description: The findings, as RV(durable.mover.preflight#module:findings).
      type: dict
    msg:
      description: One line on what the checks found.
      type: str
deferred:
  description:
    - With O(preflight), why the job was not moved in this run although its checks passed, else absent.
    - V(running) (a run of the job holds its lock, or the O(preflight.marker) file exists) or V(large) (more to move
      than O(preflight.max_files) or O(preflight.max_bytes)).
  returned: when O(preflight) is set and the job was not moved for one of these reasons
  type: str
  sample: large
job_id:
  description: The job's name; its journal and lock are under O(state_dir)/RV(job_id).
  returned: always
  type: str
  sample: 69731e096683ee2b
journal:
  description: Path of the job's SQLite journal.
  returned: always
  type: str
  sample: /var/lib/durable-mover/69731e096683ee2b/journal.sqlite
mode:
  description: The mode of the run.
  returned: always
  type: str
  sample: move
complete:
  description:
    - True when every file of the job is at its destination (or skipped by decision) and none failed.
    - In verify mode, true only when every file was verified (none failed, none unverifiable).
  returned: always
  type: bool
interrupted:
  description: True when a signal stopped the run; the journal is consistent and a rerun resumes.
  returned: always
  type: bool
hash_algorithm:
  description: The hash used to verify copies (V(blake3), V(sha256) or V(none)).
  returned: always
  type: str
  sample: blake3
stats:
  description: Counts for the whole job (totals) and for this run (moved).
  returned: always
  type: dict
  contains:
    files_total:
      description: Entries other than directories known to the job (files, symbolic links, special files).
      type: int
    files_moved:
      description: Entries moved (or copied) by this run.
      type: int
    files_already_done:
      description: Entries already at the destination when this run started.
      type: int
    files_skipped:
      description: Entries skipped by decision (special files, O(on_conflict=skip), vanished sources).
      type: int
    files_failed:
      description: Entries that failed and were kept at the source.
      type: int
    files_quarantined:
      description: Failed entries that reached O(max_attempts) and are no longer retried.
      type: int
    dirs:
      description: Directories below the source root.
      type: int
    symlinks:
      description: Symbolic links.
      type: int
    hardlinks:
      description: Further names of hard-link groups.
      type: int
    special_skipped:
      description: Special files (FIFOs, devices, sockets) left at the source.
      type: int
    conflicts_skipped:
      description: Entries left at the source because the destination held other content (O(on_conflict=skip)).
      type: int
    mounts_skipped:
      description: Mount points inside O(src) left alone (not entered), as listed in RV(mount_points).
      type: int
    readback_from_cache:
      description: Files of this run whose read-back could not come from the device (see RV(readback_from_cache)).
      type: int
    setid_cleared:
      description:
        - Files and directories this run gave the source's mode without its set-id and sticky bits, because they
          could not have the source's owner and group (see O(preserve)). Each is logged in O(audit_log).
      type: int
    bytes_total:
      description: >-
        Bytes of all regular files of the job, as a move carries them: a file's data (the holes of a sparse file are
        not bytes) and a file with several names once.
      type: int
    bytes_moved:
      description: >-
        Bytes moved by this run, counted the same way (a large copy resumed from a checkpoint counts what this run
        wrote; a further name of a hard-linked file counts nothing).
      type: int
    resumed:
      description: True when this run continued an interrupted one.
      type: bool
    files_verified:
      description: In verify mode, files whose destination matched their source or their recorded hash.
      type: int
      returned: verify mode
    files_unverifiable:
      description: In verify mode, files that could be checked only for type and size (see RV(unverifiable)).
      type: int
      returned: verify mode
failures:
  description: Failed entries, at most O(max_failures_reported).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description:
        - The source path, as one line of text. A byte that is not UTF-8 and a control character (newline, tab,
          escape, DEL, C1) are written C(\xNN), here, in RV(failures.error) and every other message, in the audit log,
          in M(durable.mover.move_info) and in the reports, so that a name reads the same everywhere.
      type: str
    error:
      description: Why it failed.
      type: str
    attempts:
      description: Attempts so far.
      type: int
    quarantined:
      description: True when it will not be retried until O(retry_failed=true).
      type: bool
readback_from_cache:
  description:
    - Files whose read-back could not come from the device, with why (data inline in the filesystem's metadata,
      or no C(O_DIRECT) on that filesystem), at most O(max_failures_reported); RV(stats.readback_from_cache)
      counts them all.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The file at the destination (see RV(failures.path) for how names are written).
      type: str
    reason:
      description: Why its read-back could not reach the device.
      type: str
skipped_entries:
  description:
    - Entries skipped by decision, with why, at most O(max_failures_reported) of each kind; RV(stats.special_skipped),
      RV(stats.conflicts_skipped) and RV(stats.files_skipped) count them all. Mount points are in RV(mount_points).
    - Not named C(skipped), which Ansible reads as "the task was skipped".
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The source path (see RV(failures.path) for how names are written).
      type: str
    kind:
      description: >-
        V(special_file) (a FIFO, socket or device node: left at the source), V(conflict) (O(on_conflict=skip): left at
        the source) or V(vanished) (deleted at the source by someone else before it was moved).
      type: str
    reason:
      description: Why it was skipped.
      type: str
mount_points:
  description:
    - Mount points inside O(src) that were left alone, with why, at most O(max_failures_reported). Empty with
      O(cross_filesystems=true) unless a file is mounted over a file.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The mount point (see RV(failures.path) for how names are written).
      type: str
    reason:
      description: Why it is a mount point, and what was done.
      type: str
unverifiable:
  description: In verify mode, files that could not be verified, at most O(max_failures_reported).
  returned: verify mode
  type: list
  elements: dict
  contains:
    path:
      description: The destination path (non-UTF-8 bytes shown as backslash escapes).
      type: str
    reason:
      description: Why it could not be verified.
      type: str
      sample: a move by rename (on one filesystem) records no hash
unverifiable_reasons:
  description: In verify mode, how many files could not be verified, by reason.
  returned: verify mode
  type: dict
  sample: {"a move by rename (on one filesystem) records no hash": 3}
plan:
  description: In check mode, what a run would do.
  returned: check mode
  type: dict
  contains:
    files:
      description: Entries that would be moved.
      type: int
    bytes:
      description: Bytes that would be moved, counted as RV(stats.bytes_total) counts them.
      type: int
    renames:
      description: Entries that would be renamed (same filesystem).
      type: int
    copies:
      description: Entries that would be copied (another filesystem).
      type: int
    conflicts:
      description: Entries whose destination exists with different content.
      type: int
    already_done:
      description: Entries already identical at the destination.
      type: int
    skipped:
      description: Special files that would be skipped.
      type: int
elapsed_seconds:
  description: Wall time of the run.
  returned: always
  type: float
bytes_per_second:
  description: RV(stats.bytes_moved) divided by RV(elapsed_seconds).
  returned: always
  type: float
msg:
  description:
    - A one-line summary, or what failed.
    - In verify mode it says how many files were verified, and why the others could not be.
  returned: always
  type: str
  sample: "verified 40 of 43 files; 3 could not be verified because hash: none records only the size (3); see unverifiable"
"""

import traceback
import uuid

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.durable.mover.plugins.module_utils import _hashing, _mover, _preflight
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, display_path

ARGUMENT_SPEC = dict(
    src=dict(type='path', required=True),
    dest=dict(type='path', required=True),
    mode=dict(type='str', choices=['move', 'copy', 'verify'], default='move'),
    hash=dict(type='str', choices=['auto', 'blake3', 'sha256', 'none'], default='auto'),
    verify_readback=dict(type='bool', default=True),
    buffer_size=dict(type='str', default='16M'),
    checkpoint_size=dict(type='str', default='256M'),
    workers=dict(type='int', default=4),
    processes=dict(type='int'),
    state_dir=dict(type='path', default='/var/lib/durable-mover'),
    job_id=dict(type='str'),
    max_attempts=dict(type='int', default=3),
    retry_failed=dict(type='bool', default=False),
    lock_timeout=dict(type='float', default=0),
    on_conflict=dict(type='str', choices=['fail', 'skip', 'overwrite'], default='fail'),
    preserve=dict(type='list', elements='str', choices=['owner', 'mode', 'times', 'xattrs', 'hardlinks'],
                  default=['owner', 'mode', 'times', 'xattrs', 'hardlinks']),
    special_files=dict(type='str', choices=['skip', 'recreate'], default='skip'),
    remove_empty_dirs=dict(type='bool'),
    exclude=dict(type='list', elements='str', default=[]),
    cross_filesystems=dict(type='bool', default=False),
    audit_log=dict(type='path'),
    max_failures_reported=dict(type='int', default=100),
    prepared=dict(type='str', no_log=False),
    preflight=dict(type='dict', options=dict(
        max_files=dict(type='int', default=-1),
        max_bytes=dict(type='int', default=-1),
        marker=dict(type='path'),
    )),
)


def execute(module: AnsibleModule) -> dict:
    """One function for check mode and real runs, so the two never drift."""
    params = dict(module.params)
    bound = params.pop('preflight')
    if bound is not None:
        return _checked_first(module, params, bound)
    return _run(module, params)


def _run(module: AnsibleModule, params: dict) -> dict:
    if module.check_mode or params['mode'] == 'verify':
        if params['mode'] == 'verify':
            return _mover.run(params)
        return _mover.plan(params)
    return _mover.run(params)


def _checked_first(module: AnsibleModule, params: dict, bound: dict) -> dict:
    """O(preflight): the preflight's checks (listing the source into the
    journal outside check mode), then the move, unless a problem, a finished
    job, a run going or a job larger than the bound says otherwise."""
    prepare = not module.check_mode and params['mode'] != 'verify'
    found = _preflight.preflight(dict(params, prepare=uuid.uuid4().hex if prepare else None,
                                      marker=bound.get('marker'), bound=(bound['max_files'], bound['max_bytes'])))
    for warning in found['warnings']:
        module.warn(warning)
    findings = found['findings']
    checked = dict(ok=found['ok'], problems=found['problems'], findings=findings, msg=_preflight.summary(found))
    if not found['ok']:
        return dict(failed=True, changed=False, msg=checked['msg'], preflight=checked)
    if isinstance(findings.get('finished'), dict):
        return dict(findings['finished'], changed=False, preflight=checked)
    plan = findings.get('plan') or {}
    if findings.get('running') or findings.get('async_marker'):
        deferred = 'running'
    elif not _within(plan.get('files'), bound['max_files']) or not _within(plan.get('bytes'), bound['max_bytes']):
        deferred = 'large'
    else:
        deferred = None
    if deferred and prepare:
        return dict(changed=False, deferred=deferred, msg='%s; not moved here: %s' % (checked['msg'], {
            'running': 'a run of this job may still be going',
            'large': 'more to move than the bound of this run'}[deferred]), preflight=checked)
    if findings.get('prepared'):
        params['prepared'] = findings['prepared']
    try:
        result = _run(module, params)
    except MoverError as exc:
        result = dict(failed=True, msg=str(exc), error_path=display_path(exc.path) if exc.path else None,
                      errno=exc.errno)
    return dict(result, preflight=checked)


def _within(count, most: int) -> bool:
    return most < 0 or (count is not None and int(count) <= most)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = execute(module)
    except _hashing.MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library), exception=exc.traceback)
    except MoverError as exc:
        module.fail_json(msg=str(exc), error_path=display_path(exc.path) if exc.path else None,
                         errno=exc.errno)
    except Exception as exc:  # a bug: say so plainly, with the traceback
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
    if result.get('failed'):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
