#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight
short_description: Check that a durable.mover move can run on a host, before anything moves
version_added: 0.1.0
description:
  - Checks, for one O(src)/O(dest) pair, what would make a M(durable.mover.move) of it fail or must stop it
    from starting, and measures what the move still has to do. It changes nothing, unless O(prepare) is set.
  - "O(src) exists and is readable (and, in V(move) mode, its directories are writable so that moved files can be
    removed); O(dest), or its nearest existing ancestor, is a writable directory on a filesystem that is not
    mounted read-only; O(state_dir) is writable."
  - Whether O(src) and O(dest) are on the same filesystem (a move is then a rename per entry and needs no space).
  - The mount points inside O(src), which the move leaves alone unless O(cross_filesystems=true); O(dest) or
    O(state_dir) reachable inside O(src) through a mount is a problem.
  - The files and bytes still to move, from the job's check mode (the plan of M(durable.mover.move) in check
    mode, which also reads the job's journal, so a resumed job counts only what is left).
  - What the move will allocate at the destination, against its free space and free inodes. Each file to copy
    takes its data (its size less its holes, found with C(SEEK_DATA)/C(SEEK_HOLE) as the copy finds them) rounded
    up to the destination's block size; a further name of a hard-linked file (with V(hardlinks) in O(preserve))
    nothing; a symbolic link of 60 bytes or more a block. Every new inode takes 512 bytes on xfs (inodes are
    allocated from free space), 1 KiB on btrfs (its metadata, written twice), nothing on ext2/3/4 (a fixed
    inode table, whose free inodes are checked), 256 bytes elsewhere; every new directory a block, and more as
    its names fill it. A move within one filesystem renames (no data, no inode). A margin of 5% (at least 1 MiB
    when files are copied) is added. Not enough space or inodes is a problem, with both numbers and how the
    estimate was made in the message; RV(findings.space.estimate) has each part.
  - When O(preserve) includes V(xattrs) and the source has extended attributes (the source root and its first
    entries are sampled), whether the destination's filesystem supports them.
  - The Python version on the host, and whether C(blake3) is importable or SHA-256 is the fallback.
  - Whether O(state_dir) is on a filesystem shared over a network or a cluster (NFS, CIFS/SMB, Lustre, CephFS,
    GlusterFS, GPFS, BeeGFS and others, by the type in the mount table). SQLite's locking is unreliable there,
    so this is a warning (and C(network_filesystem) in RV(findings.state_dir)), not a problem. Keep each host's
    state directory on a local disk, also when several hosts move one shared tree.
  - The module fails, listing every problem, when there is any, unless O(fail_on_problems=false); the findings
    are returned either way.
author:
  - Durable Mover Maintainers (@durable-mover)
requirements:
  - Python 3.9 or newer on the managed host, standard library only.
attributes:
  check_mode:
    support: full
    description: Reads only in check mode (O(prepare) is ignored).
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems with C(statvfs).
  idempotent:
    support: full
    description: Never changes anything but the job's journal with O(prepare) (reported as not changed).
options:
  src:
    description: The O(durable.mover.move#module:src) of the move.
    type: path
    required: true
  dest:
    description: The O(durable.mover.move#module:dest) of the move.
    type: path
    required: true
  mode:
    description:
      - The O(durable.mover.move#module:mode) of the move. V(verify) needs no space and no write access to O(dest);
        V(copy) needs space even on one filesystem.
    type: str
    choices: [move, copy, verify]
    default: move
  hash:
    description:
      - The O(durable.mover.move#module:hash) of the move. V(blake3) without the C(blake3) package is a problem;
        V(auto) without it is reported as the SHA-256 fallback.
    type: str
    choices: [auto, blake3, sha256, none]
    default: auto
  preserve:
    description:
      - The O(durable.mover.move#module:preserve) of the move. With V(xattrs), the destination must support the
        extended attributes the source has.
    type: list
    elements: str
    choices: [owner, mode, times, xattrs, hardlinks]
    default: [owner, mode, times, xattrs, hardlinks]
  state_dir:
    description: The O(durable.mover.move#module:state_dir) of the move; it must be writable.
    type: path
    default: /var/lib/durable-mover
  job_id:
    description: The O(durable.mover.move#module:job_id) of the move, when it is not derived from O(src) and O(dest).
    type: str
  exclude:
    description: The O(durable.mover.move#module:exclude) of the move (excluded entries are not counted).
    type: list
    elements: str
    default: []
  on_conflict:
    description: The O(durable.mover.move#module:on_conflict) of the move (conflicting entries are not counted unless V(overwrite)).
    type: str
    choices: [fail, skip, overwrite]
    default: fail
  special_files:
    description: The O(durable.mover.move#module:special_files) of the move.
    type: str
    choices: [skip, recreate]
    default: skip
  cross_filesystems:
    description:
      - The O(durable.mover.move#module:cross_filesystems) of the move. With V(false), what is mounted inside
        O(src) is not counted (nor moved).
      - O(dest) or O(state_dir) reachable inside O(src) through a mount is a problem either way.
    type: bool
    default: false
  prepare:
    description:
      - List the source into the job's journal (holding the job's lock, never waiting for it), as the scan of
        M(durable.mover.move) would, instead of walking it read-only; the plan is then made from the journal's
        rows, and RV(findings.prepared) is a token to give the move as O(durable.mover.move#module:prepared); that
        move moves what the journal holds without listing the source again. The source is listed once per play.
      - A job whose last run finished, with nothing new at its source, gets the move's own result in
        RV(findings.finished), so that no move needs to run.
      - A run holding the job's lock is reported in RV(findings.running) (nothing is listed then, RV(findings.plan)
        is null); a journal whose scope options (O(exclude), O(special_files), O(on_conflict),
        O(cross_filesystems)) changed since its last run is not prepared (the move reconsiders them).
      - Ignored in check mode, and when a problem was found first.
      - Files created at the source after the preflight and before the move are not moved by that move; the next
        run finds them (seed with runs while the source is in use, then a last run once it is quiet).
    type: bool
    default: false
  marker:
    description:
      - A file whose existence is reported in RV(findings.async_marker) (C(~) expanded); the role passes the file in
        the async directory where it keeps the job id of a move it runs in the background.
    type: path
  fail_on_problems:
    description:
      - Fail when a problem is found. With V(false), the module succeeds and RV(ok) says whether the move can run.
    type: bool
    default: true
notes:
  - Free space is what an unprivileged writer may use (C(f_bavail)); the estimate adds about 1 KiB per entry for
    the journal when O(state_dir) is on the destination's filesystem.
  - The estimate is an estimate. A filesystem that compresses or deduplicates may take less, and a destination
    filled by someone else during the move may still fill up; the move then stops cleanly with
    C(No space left on device) and a rerun resumes.
seealso:
  - module: durable.mover.move
  - module: durable.mover.move_info
"""

EXAMPLES = r"""
- name: Check that the data disk can be moved
  durable.mover.preflight:
    src: /srv/old-disk/data
    dest: /srv/new-disk/data

- name: Look without failing, then decide
  durable.mover.preflight:
    src: /srv/data
    dest: /mnt/backup/data
    mode: copy
    fail_on_problems: false
  register: preflight

- name: Show what stands in the way
  ansible.builtin.debug:
    msg: "{{ preflight.problems }}"
  when: not preflight.ok
"""

RETURN = r"""
ok:
  description: True when no problem was found.
  returned: always
  type: bool
problems:
  description: One sentence per problem found; empty when RV(ok).
  returned: always
  type: list
  elements: str
  sample: ["not enough free space at dest: about 49.5 MiB (51923558 bytes) needed, /srv/new has 29.1 MiB (30564352 bytes)
           free (12000 file(s) holding 1.1 MiB of data take 46.9 MiB in 4.0 KiB blocks, inodes and directories 292.0 KiB,
           a 5% margin 2.4 MiB)"]
findings:
  description: What was measured, problem or not.
  returned: always
  type: dict
  contains:
    python:
      description: C(version), C(executable) and C(supported) (3.9 or newer) of the host's Python.
      type: dict
    hash:
      description: C(requested), C(algorithm) (what a move would use), C(blake3_available), C(fallback) (V(auto) fell back to SHA-256).
      type: dict
    mode:
      description: The mode of the move.
      type: str
    job_id:
      description: The job's name.
      type: str
    src:
      description: >-
        C(path), C(exists), C(type) (directory, file or symlink), C(readable), C(device) and, in V(move) mode,
        C(removable); for a directory, C(mount_points) (the mount points found inside it: in the mount table, or on
        another device) and C(cross_filesystems) (whether the move enters them; it never removes them).
      type: dict
    dest:
      description: >-
        C(path), C(exists), C(nearest_existing) (the directory the other keys describe), C(writable), C(read_only),
        C(free_bytes), C(free_inodes) (null when the filesystem has no inode limit), C(device), C(type) (the
        filesystem's type from the mount table; null when unknown), C(block_size).
      type: dict
    state_dir:
      description: >-
        The job's state directory, with the same keys as RV(findings.dest), and C(network_filesystem) (its
        filesystem is shared over a network or a cluster: the module warns).
      type: dict
    xattrs:
      description: >-
        C(wanted) (O(preserve) has V(xattrs)), C(supported) (the destination's filesystem has xattrs; null when not
        checked), C(source_names) (names sampled at the source), C(unsupported_names).
      type: dict
    journal:
      description: The job's journal path.
      type: str
    journal_exists:
      description: Whether the job has run before.
      type: bool
    prepared:
      description: >-
        With O(prepare): the token for O(durable.mover.move#module:prepared), when the source was listed into the
        journal; null otherwise.
      type: str
    finished:
      description: >-
        With O(prepare): the result M(durable.mover.move) returns for this job (C(changed) false), when its last
        run finished and nothing new is at its source; null otherwise.
      type: dict
    running:
      description: Whether a run holds the job's lock.
      type: bool
    running_pid:
      description: The pid of the run holding the job's lock (C(-1) when it cannot be read); null when none does.
      type: int
    async_marker:
      description: With O(marker), whether that file exists.
      type: bool
    larger:
      description: >-
        Always null here. From M(durable.mover.move) with O(durable.mover.move#module:preflight): C(files) and
        C(bytes) counted before the count stopped, once more than that run moves at once, when the source was not
        listed (RV(findings.plan) null, RV(findings.space) an upper bound).
      type: dict
    plan:
      description: >-
        The check mode plan of the move (C(files), C(bytes), C(renames), C(copies), C(conflicts), C(already_done),
        C(skipped)); null when it could not be made.
      type: dict
    space:
      description: >-
        C(same_filesystem), C(files_to_move), C(bytes_to_move) (their data: holes excluded, a file with several names once),
        C(bytes_needed) (what the destination will allocate, C(bytes) of RV(findings.space.estimate), plus the journal
        estimate when it shares the destination's filesystem; 0 in V(verify) mode), C(free_bytes), C(inodes_needed),
        C(free_inodes), C(journal_bytes_estimate), C(estimate). Missing when no plan could be made. With
        C(upper_bound) true (only from M(durable.mover.move), see RV(findings.larger)), C(bytes_needed) is at most
        what the source's whole filesystem holds would take, and the counts to move are null.
      type: dict
      contains:
        estimate:
          description: >-
            How C(bytes_needed) was counted (null in V(verify) mode): C(filesystem), C(block_size), C(files) (to copy),
            C(hardlinks) (further names, linked), C(renames), C(dirs) (new directories below dest), C(data_bytes) (the
            files' data, holes excluded), C(file_blocks_bytes) (that data in whole blocks), C(inodes) (new inodes, dest
            and its missing parents included), C(inode_bytes), C(directory_bytes), C(margin_bytes), C(bytes) (the sum)
            and C(method) (the same in words).
          type: dict
msg:
  description: The problems in one line, or what was found.
  returned: always
  type: str
"""

import traceback
import uuid

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.durable.mover.plugins.module_utils._preflight import preflight, summary

ARGUMENT_SPEC = dict(
    src=dict(type='path', required=True),
    dest=dict(type='path', required=True),
    mode=dict(type='str', choices=['move', 'copy', 'verify'], default='move'),
    hash=dict(type='str', choices=['auto', 'blake3', 'sha256', 'none'], default='auto'),
    preserve=dict(type='list', elements='str', choices=['owner', 'mode', 'times', 'xattrs', 'hardlinks'],
                  default=['owner', 'mode', 'times', 'xattrs', 'hardlinks']),
    state_dir=dict(type='path', default='/var/lib/durable-mover'),
    job_id=dict(type='str'),
    exclude=dict(type='list', elements='str', default=[]),
    on_conflict=dict(type='str', choices=['fail', 'skip', 'overwrite'], default='fail'),
    special_files=dict(type='str', choices=['skip', 'recreate'], default='skip'),
    cross_filesystems=dict(type='bool', default=False),
    prepare=dict(type='bool', default=False),
    marker=dict(type='path'),
    fail_on_problems=dict(type='bool', default=True),
)


def execute(params: dict, check_mode: bool = False) -> dict:
    """Nothing is changed, but the job's journal with `prepare` outside check mode."""
    params = dict(params, prepare=uuid.uuid4().hex if params.get('prepare') and not check_mode else None)
    found = preflight(params)
    return dict(changed=False, ok=found['ok'], problems=found['problems'], findings=found['findings'],
                msg=summary(found), warnings=found['warnings'])


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = execute(dict(module.params), module.check_mode)
    except Exception as exc:  # a bug: say so plainly, with the traceback
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
    for warning in result.pop('warnings'):
        module.warn(warning)
    if not result['ok'] and module.params['fail_on_problems']:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
