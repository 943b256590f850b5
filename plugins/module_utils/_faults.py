# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test-only fault injection, read once from the environment at import.

PRIVATE to the durable.mover collection; not a public API.

``DURABLE_MOVER_FAULTS`` is a comma separated list of:

* ``kill=<point>[@<n>]``: SIGKILL this process the n-th time (default 1st)
  the named step boundary is reached (see ``POINTS``);
* ``corrupt=<glob>``: the read-back hash of files whose relative path
  matches the glob is altered, as if the disk returned other bytes;
* ``broken=<variant>``: a deliberately broken durability chain, used only by
  the crash suite to prove that it can detect losses (see ``BROKEN``).

Without the variable every check is one dictionary lookup on an empty dict.
"""

from __future__ import annotations

import fnmatch
import os
import signal

POINTS = (
    'after_part_write',      # part file written, before fdatasync
    'after_part_sync',       # part file durable, before verification
    'after_checkpoint',      # a large-file checkpoint committed
    'after_verify',          # read-back verified, before metadata/rename
    'after_rename',          # part renamed into place, before dest dir fsync
    'after_dest_dir_sync',   # dest dir durable, before journal 'copied'
    'after_journal_copied',  # journal says copied, before unlinking sources
    'after_unlink',          # a source unlinked, before source dir fsync
    'after_src_dir_sync',    # source dirs durable, before journal 'done'
    'after_journal_done',    # batch recorded done
    'after_scan_batch',      # a scan batch committed
)

BROKEN = (
    'no_part_fdatasync',     # skip fdatasync of the part file
    'no_dest_dir_fsync',     # skip fsync of the destination directory
    'no_batch_dir_sync',     # skip the batch's syncfs for its directories
    'unlink_before_journal',  # unlink sources before the journal commit
    'no_finalize_dir_sync',  # skip the flush of the destination's directories once their metadata is set
)

_kill = {}
_corrupt = []
_broken = set()
_counts = {}


def _parse(spec):
    for item in filter(None, (part.strip() for part in spec.split(','))):
        key, _sep, value = item.partition('=')
        if key == 'kill':
            point, _sep, nth = value.partition('@')
            if point not in POINTS:
                raise ValueError('unknown fault point %r' % point)
            _kill[point] = int(nth or 1)
        elif key == 'corrupt':
            _corrupt.append(value)
        elif key == 'broken':
            if value not in BROKEN:
                raise ValueError('unknown broken variant %r' % value)
            _broken.add(value)
        else:
            raise ValueError('unknown fault %r' % item)


_parse(os.environ.get('DURABLE_MOVER_FAULTS', ''))


def point(name):
    """A step boundary: die here if the test asked for it."""
    if not _kill or name not in _kill:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _kill[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def corrupt(relpath):
    """True if the read-back of this file must be treated as corrupt."""
    return bool(_corrupt) and any(fnmatch.fnmatchcase(relpath, pat) for pat in _corrupt)


def broken(variant):
    """True if the test-only broken durability variant is selected."""
    return variant in _broken
