# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metadata that must survive a move: owner, mode, times, xattrs (ACLs, capabilities, labels).

PRIVATE to the durable.mover collection; not a public API.

Order matters (apply() keeps it; as in GNU cp, owner, then xattrs, then mode):

1. the owner: chown(2) clears the set-id bits and the file capabilities
   (security.capability), so whatever it would undo is written after it;
2. the xattrs (POSIX ACLs, capabilities, SELinux labels, user attributes),
   before the mode, while the mode still lets the owner write them (a runner
   other than root needs write permission to set user.* on its files; a
   0400 file would refuse them);
3. the mode: setting an access ACL rewrote the group bits to the ACL's mask,
   and chmod(2) now sets the mask from the group bits: the same value, as the
   source's mode and ACL agree. chmod after chown, which cleared set-id bits;
4. the times, last: no step after them may touch them.

Set-id and sticky bits go only with the owner: when the copy does not have
the source's owner and group (a runner other than root cannot give files
away; or `owner` is not preserved), they are left out of its mode, as cp
does, and apply() returns the bits it left out so that the run can report
them. A setuid-root file moved by a user never becomes setuid to that user.
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, os_error

PRESERVE_ALL = ('owner', 'mode', 'times', 'xattrs', 'hardlinks')
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0
_NOT_SUPPORTED = (errno.ENOTSUP, getattr(errno, 'EOPNOTSUPP', errno.ENOTSUP))
# xfs lists a POSIX ACL to root twice: as system.posix_acl_* and as its on-disk
# form trusted.SGI_ACL_*. Only the former is copied: the latter would land on
# another filesystem as an inert, soon stale attribute (which, moved back to
# xfs after the ACL changed, would be written last and revert it).
_SKIPPED_XATTR_PREFIXES = ('trusted.SGI_ACL_',)
# Kept only on a copy that has the source's owner and group.
SETID_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def _proc_fd(fd):
    """A path to the inode an fd (O_PATH included) holds, never to a name."""
    return '/proc/self/fd/%d' % fd


def _target(fd=None, dir_fd=None, name=None, node_fd=None):
    """What os.*xattr accept, and whether they may follow it: an fd; an O_PATH
    fd's /proc path (followed: it leads to that inode only); or a /proc path
    to a name we must not follow."""
    if fd is not None:
        return fd, True
    if node_fd is not None:
        return _proc_fd(node_fd), True
    return '/proc/self/fd/%d/%s' % (dir_fd, name), False


def read_xattrs(fd=None, dir_fd=None, name=None):
    """All extended attributes as a list of (name, value); [] if unsupported."""
    if not hasattr(os, 'listxattr'):
        return []
    target, follow = _target(fd, dir_fd, name)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED or exc.errno == errno.ENOENT:
            return []
        raise
    result = []
    for attr in sorted(names):
        if attr.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            result.append((attr, os.getxattr(target, attr, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno == getattr(errno, 'ENODATA', None):
                continue
            raise
    return result


def write_xattrs(attrs, fd=None, dir_fd=None, name=None, path_for_errors=None, node_fd=None):
    target, follow = _target(fd, dir_fd, name, node_fd)
    for attr, value in attrs:
        try:
            os.setxattr(target, attr, value, follow_symlinks=follow)
        except OSError as exc:
            if attr.startswith('security.selinux') and not IS_ROOT:
                continue
            if exc.errno in _NOT_SUPPORTED:
                raise MoverError('the destination filesystem does not support extended '
                                 'attribute %s (set preserve without xattrs to move anyway)' % attr,
                                 path_for_errors, exc.errno)
            raise os_error(exc, 'cannot set extended attribute %s' % attr, path_for_errors)


def _chown(uid, gid, fd=None, dir_fd=None, name=None, node_fd=None):
    """Give the copy the source's owner; False if we may not (then, like cp -a,
    the copy stays the runner's)."""
    try:
        if fd is not None:
            os.fchown(fd, uid, gid)
        elif node_fd is not None:
            os.chown(_proc_fd(node_fd), uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except PermissionError:
        if IS_ROOT:
            raise
        return False
    return True


def _has_owner_of(st, chowned, where):
    """Has the copy the owner and group of source stat `st`? `chowned`: what
    _chown returned, None if owner is not preserved (then the copy is asked)."""
    if chowned is not None:
        return chowned
    if where['fd'] is not None or where['node_fd'] is not None:
        now = os.fstat(where['fd'] if where['fd'] is not None else where['node_fd'])
    else:
        now = os.lstat(where['name'], dir_fd=where['dir_fd'])
    return (now.st_uid, now.st_gid) == (st.st_uid, st.st_gid)


def apply(st, preserve, fd=None, dir_fd=None, name=None, xattrs=None, path_for_errors=None,
          node_fd=None):
    """Apply the metadata of source stat `st` to the copy: an fd (file, dir), an
    O_PATH `node_fd` (FIFO, device node; reached through /proc, so no name is
    ever followed) or `name` in `dir_fd` (a symlink, never followed).

    Returns the set-id and sticky bits left out of the mode because the copy
    has not the source's owner (0 if none).
    """
    where = {'fd': fd, 'dir_fd': dir_fd, 'name': name, 'node_fd': node_fd}
    is_link = fd is None and node_fd is None
    left_out = 0
    try:
        chowned = _chown(st.st_uid, st.st_gid, **where) if 'owner' in preserve else None
        if 'xattrs' in preserve and xattrs:
            write_xattrs(xattrs, path_for_errors=path_for_errors, **where)
        if 'mode' in preserve and not is_link:
            mode = stat.S_IMODE(st.st_mode)
            if mode & SETID_BITS and not _has_owner_of(st, chowned, where):
                left_out = mode & SETID_BITS
                mode &= ~SETID_BITS
            if fd is not None:
                os.fchmod(fd, mode)
            else:
                os.chmod(_proc_fd(node_fd), mode)
        if 'times' in preserve:
            times = (st.st_atime_ns, st.st_mtime_ns)
            if fd is not None:
                os.utime(fd, ns=times)
            elif node_fd is not None:
                os.utime(_proc_fd(node_fd), ns=times)
            else:
                os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
    except MoverError:
        raise
    except OSError as exc:
        raise os_error(exc, 'cannot apply metadata', path_for_errors)
    return left_out


def expected_mode(src_st, dst_st):
    """The mode a copy with dst_st's owner gets from src_st: without set-id and
    sticky bits unless it has the source's owner and group (see apply)."""
    mode = stat.S_IMODE(src_st.st_mode)
    if (src_st.st_uid, src_st.st_gid) != (dst_st.st_uid, dst_st.st_gid):
        mode &= ~SETID_BITS
    return mode


def differs(src_st, dst_st, preserve):
    """True if applying `preserve` from src_st would change dst_st."""
    if 'mode' in preserve and expected_mode(src_st, dst_st) != stat.S_IMODE(dst_st.st_mode):
        return True
    if 'owner' in preserve and IS_ROOT and (src_st.st_uid, src_st.st_gid) != (dst_st.st_uid, dst_st.st_gid):
        return True
    if 'times' in preserve and src_st.st_mtime_ns != dst_st.st_mtime_ns:
        return True
    return False
