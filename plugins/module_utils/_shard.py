# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One tree split across several hosts: the shard plan and the final pruning.

PRIVATE to the durable.mover collection; not a public API.

A *unit* is what one job of M(durable.mover.move) moves: a directory at the
plan's depth below the tree's root (or a shallower one without
subdirectories), or the *loose entries* of a directory above that depth (its
files, links and special files: the directories of it are excluded by name,
each its own unit or the parent of units; this job also gives the directory
its metadata at the destination). Units are assigned to shards
greedily: the heaviest first, each to the least loaded shard, where a load is
its share of the tree's bytes plus its share of the tree's files (so a shard
of many small files and one of a few big ones weigh alike). Ties go to the
lowest path and the lowest shard index: the same tree always gives the same
plan.

The plan only reads. ``prune`` is the only step that changes anything: it
removes directories that are empty (``rmdir``, never a recursive removal),
each followed by an fsync of its parent, so that the removal is on disk
before the next (shallower) one is tried.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from ansible_collections.durable.mover.plugins.module_utils import _durable
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, os_error

PLAN_VERSION = 1
MAX_DEPTH = 16
LOOSE = 'loose'
DIRECTORY = 'dir'
_GLOB_SPECIALS = '*?['


class PlanError(MoverError):
    """Input the planner cannot work with (a sentence naming the problem)."""


def glob_escape(name):
    """`name` as an fnmatch pattern matching only itself."""
    return ''.join('[%s]' % char if char in _GLOB_SPECIALS else char for char in name)


def _join(rel, name):
    return '%s/%s' % (rel, name) if rel else name


def _listdir(path, rel, unreadable):
    try:
        with os.scandir(path) as entries:
            return sorted(((entry.name, entry) for entry in entries), key=lambda item: item[0])
    except OSError as exc:
        unreadable.append({'path': rel or '.', 'msg': os.strerror(exc.errno or errno.EIO)})
        return []


def _lstat(entry):
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None


def measure(path, rel, unreadable):
    """(files, bytes) below the directory `path`: every entry that is not a
    directory is a file, its bytes its apparent size; links are not followed."""
    files = size = 0
    stack = [(path, rel)]
    while stack:
        here, here_rel = stack.pop()
        for name, entry in _listdir(here, here_rel, unreadable):
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append((os.path.join(here, name), _join(here_rel, name)))
            else:
                files += 1
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
    return files, size


def units_of(root, depth):
    """The units of the tree at `root`, in path order, and the unreadable
    directories met (they are in no unit's count)."""
    units, unreadable = [], []
    stack = [('', 0)]
    while stack:
        rel, level = stack.pop()
        loose = {'path': rel, 'kind': LOOSE, 'files': 0, 'bytes': 0, 'exclude': []}
        subdirs = []
        for name, entry in _listdir(os.path.join(root, rel) if rel else root, rel, unreadable):
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(name)
                loose['exclude'].append(glob_escape(name))
            else:
                loose['files'] += 1
                loose['bytes'] += st.st_size if stat.S_ISREG(st.st_mode) else 0
        # always a unit, empty or not: its job also gives the directory its
        # metadata at the destination
        units.append(loose)
        for name in reversed(subdirs):
            child = _join(rel, name)
            full = os.path.join(root, child)
            if level + 1 < depth and _has_subdirs(full):
                stack.append((child, level + 1))
                continue
            files, size = measure(full, child, unreadable)
            units.append({'path': child, 'kind': DIRECTORY, 'files': files, 'bytes': size, 'exclude': []})
    units.sort(key=lambda unit: (unit['path'], unit['kind']))
    return units, unreadable


def _has_subdirs(path):
    try:
        with os.scandir(path) as entries:
            return any(entry.is_dir(follow_symlinks=False) for entry in entries)
    except OSError:
        return False


def assign(units, shards):
    """Shard index of each unit (same order): heaviest first to the least loaded."""
    total_files = sum(unit['files'] for unit in units) or 1
    total_bytes = sum(unit['bytes'] for unit in units) or 1

    def weight(unit):
        # every unit is one job: a small fixed weight spreads empty ones too
        return unit['files'] / total_files + unit['bytes'] / total_bytes + 1e-9

    loads = [0.0] * shards
    found = [0] * len(units)
    order = sorted(range(len(units)), key=lambda i: (-weight(units[i]), units[i]['path'], units[i]['kind']))
    for i in order:
        target = min(range(shards), key=lambda s: (loads[s], s))
        found[i] = target
        loads[target] += weight(units[i])
    return found


def job_id(src, dest, unit):
    """The unit's job id: the same on every host (so that the job's part files
    carry the same tag wherever it runs, and a host that takes the unit over
    recognises and removes those the first one left)."""
    key = '\0'.join((os.path.abspath(src), os.path.abspath(dest), unit['kind'], unit['path']))
    return 'shard-' + hashlib.sha256(os.fsencode(key)).hexdigest()[:20]


def check_input(src, dest, hosts, depth):
    """Refuse what the planner cannot plan, with a sentence naming the problem."""
    if not isinstance(hosts, (list, tuple)) or not hosts:
        raise PlanError('hosts must name at least one host (the hosts sharing the tree)')
    names = [str(host) for host in hosts]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise PlanError('hosts must be distinct; listed more than once: %s' % ', '.join(twice))
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise PlanError('depth must be an integer from 1 to %d, not %r' % (MAX_DEPTH, depth))
    if not os.path.isabs(src) or not os.path.isabs(dest):
        raise PlanError('src and dest must be absolute paths', src if not os.path.isabs(src) else dest)
    try:
        st = os.stat(src)
    except OSError as exc:
        raise os_error(exc, 'cannot read the tree to plan', src)
    if not stat.S_ISDIR(st.st_mode):
        raise PlanError('src must be a directory (the tree to split)', src, errno.ENOTDIR)
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
    if real_dest == real_src or real_dest.startswith(real_src.rstrip('/') + '/'):
        raise PlanError('dest is inside src (or the same directory)', dest)
    return names


def make_plan(src, dest, hosts, depth=1):
    """The whole plan: units, each with its shard, host and job id; per shard totals."""
    names = check_input(src, dest, hosts, depth)
    units, unreadable = units_of(src, depth)
    for unit, index in zip(units, assign(units, len(names))):
        unit['shard'] = index
        unit['host'] = names[index]
        unit['job_id'] = job_id(src, dest, unit)
        unit['src'] = os.path.join(src, unit['path']) if unit['path'] else src
        unit['dest'] = os.path.join(dest, unit['path']) if unit['path'] else dest
    shards = []
    for index, name in enumerate(names):
        mine = [unit for unit in units if unit['shard'] == index]
        shards.append({'index': index, 'host': name, 'units': len(mine),
                       'files': sum(unit['files'] for unit in mine),
                       'bytes': sum(unit['bytes'] for unit in mine)})
    # the directories above the units: removed at the end once empty
    expanded = sorted(unit['path'] for unit in units if unit['kind'] == LOOSE and unit['path'])
    return {
        'version': PLAN_VERSION, 'src': src, 'dest': dest, 'depth': depth,
        'units': units, 'shards': shards, 'parents': expanded, 'unreadable': unreadable,
        'totals': {'units': len(units), 'files': sum(u['files'] for u in units),
                   'bytes': sum(u['bytes'] for u in units), 'shards': len(names)},
    }


def prune(root, paths, check_mode=False):
    """Remove the directories `paths` (relative to `root`) that are empty,
    deepest first: rmdir, then fsync of the parent (the removal is durable
    before a shallower one is tried). Never the root, never a non-empty one.

    Returns ``{'removed': [...], 'kept': [{'path', 'reason'}], 'missing': [...]}``.
    """
    found = {'removed': [], 'kept': [], 'missing': []}
    wanted = sorted({os.path.normpath(rel).strip('/') for rel in paths} - {'', '.'},
                    key=lambda rel: (-rel.count('/'), rel))
    for rel in wanted:
        if rel.startswith('..') or os.path.isabs(rel):
            raise PlanError('a directory to remove must be inside the tree', rel)
        parent_rel, name = os.path.split(rel)
        parent_path = os.path.join(root, parent_rel) if parent_rel else root
        try:
            parent = _durable.open_root(parent_path)
        except MoverError as exc:
            if exc.errno == errno.ENOENT:
                found['missing'].append(rel)
                continue
            raise
        try:
            _remove_one(parent, parent_path, name, rel, found, check_mode)
        finally:
            os.close(parent)
    return found


def _remove_one(parent, parent_path, name, rel, found, check_mode):
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        found['missing'].append(rel)
        return
    if not stat.S_ISDIR(st.st_mode):
        found['kept'].append({'path': rel, 'reason': 'not a directory'})
        return
    if check_mode:
        if os.listdir(os.path.join(parent_path, name)):
            found['kept'].append({'path': rel, 'reason': 'not empty'})
        else:
            found['removed'].append(rel)
        return
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            found['kept'].append({'path': rel, 'reason': 'not empty'})
            return
        if exc.errno == errno.EBUSY:
            found['kept'].append({'path': rel, 'reason': 'a mount point'})
            return
        raise os_error(exc, 'cannot remove the empty source directory', os.path.join(parent_path, name))
    _durable.sync_dir(parent, parent_path)       # the removal is on disk
    found['removed'].append(rel)
