# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bringing one entry to its final destination name (steps 1-5 of a move).

PRIVATE to the durable.mover collection; not a public API.

`Transfer.run(row)` ends with the entry renamed into place at the destination
(or found there already, identical) and returns an Outcome; it never removes a
source other than by rename(2) on one filesystem. Making the destination
directory durable, the journal commit and the unlink of the source are the
batch's job (_mover.py), in that order.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import stat
import threading

from ansible_collections.durable.mover.plugins.module_utils import _copy, _durable, _faults, _hashing
from ansible_collections.durable.mover.plugins.module_utils import _metadata
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, os_error
from ansible_collections.durable.mover.plugins.module_utils._scan import entry_state, special_name

O_NOATIME = getattr(os, 'O_NOATIME', 0)
O_PATH = getattr(os, 'O_PATH', 0)     # Linux: an fd that names an inode without opening it
NAME_MAX = 255
# Files larger than this many buffers are copied by a _copy.Pipeline, flushed
# and read back every PIPELINE_FLUSH bytes while the rest is written, in
# PIPELINE_POOL chunks of PIPELINE_CHUNK bytes.
PIPELINE_MIN_BUFFERS = 4
SMALL_BUFFER = 1024 * 1024
PIPELINE_CHUNK = 1024 * 1024
PIPELINE_POOL = 4
PIPELINE_FLUSH = 256 * 1024 * 1024
# At most this many prefetched fds are held at once, and never more than a
# quarter of RLIMIT_NOFILE (a batch of batch_files files could otherwise leave
# no fd for the copies themselves); the rest are opened as they are copied.
PREFETCH_FDS = 256
# A flushed part up to this size is read back through the page cache, all of
# the batch's at once, once every one of its pages is found gone from it
# (_copy.dropped); a larger one with O_DIRECT reads, one file after another.
READBACK_PREFETCH_MAX = 128 * 1024

MOVED, IDENTICAL, FAILED, SKIPPED, INTERRUPTED, RETRY, STAGED = (
    'moved', 'identical', 'failed', 'skipped', 'interrupted', 'retry', 'staged')


class Outcome:
    __slots__ = ('row', 'status', 'method', 'digest', 'error', 'bytes', 'fatal', 'src_ident', 'staged',
                 'setid_cleared', 'readback')

    def __init__(self, row, status, method=None, digest=None, error=None, nbytes=0, src_ident=None,
                 staged=None, setid_cleared=0):
        self.row = row
        self.status = status
        self.method = method
        self.digest = digest
        self.error = error
        self.bytes = nbytes
        self.fatal = bool(getattr(error, 'fatal', False))
        self.src_ident = src_ident
        self.staged = staged      # STAGED: (reldir, name, dreldir, dname, part, st, sparse, replace, part's id)
        # The source's mode, if the copy got it without its set-id/sticky bits (owner not kept)
        self.setid_cleared = setid_cleared
        # Why its read-back could not come from the device (_copy.INLINE, NO_DIRECT), or None
        self.readback = None


def _file_id(st, ctime=False):
    """(st_dev, st_ino): which file a name or descriptor is; with its ctime
    for a file no longer held open (its number may be reused)."""
    return (st.st_dev, st.st_ino, st.st_ctime_ns) if ctime else (st.st_dev, st.st_ino)


def open_read(dir_fd, name):
    """Open `name` to read it, never following a link, and without updating its
    atime where allowed (reading the destination to compare it must not undo
    the atime the move preserved). O_NONBLOCK: a FIFO swapped in after the type
    check opens at once (and fails to read) instead of blocking the run."""
    flags = os.O_RDONLY | _durable.O_NOFOLLOW | _durable.O_CLOEXEC | os.O_NONBLOCK
    if O_NOATIME:
        try:
            return os.open(name, flags | O_NOATIME, dir_fd=dir_fd)
        except PermissionError:      # O_NOATIME needs ownership (or CAP_FOWNER)
            pass
    return os.open(name, flags, dir_fd=dir_fd)


def link_digest(target):
    """What the journal records of a symbolic link: its target's digest
    ('link:<sha256>'), so that verify can check a link whose source is gone."""
    return 'link:' + hashlib.sha256(os.fsencode(target)).hexdigest()


def recorded_algorithm(recorded):
    """The algorithm of a recorded hash ('blake3:..', 'sha256:..') if it can be computed here."""
    algorithm = (recorded or '').partition(':')[0]
    if algorithm == 'sha256' or (algorithm == 'blake3' and _hashing.blake3_available()):
        return algorithm
    return None


def _close_reader(pipeline):
    if pipeline is not None and pipeline.read_fd is not None:
        os.close(pipeline.read_fd)
        pipeline.read_fd = None


def split(rel):
    reldir, _sep, name = rel.rpartition('/')
    return reldir, name


def ident(st):
    """What must not change while a file is copied (and until its source is
    removed): inode, size, mtime, ctime, and the link count (see _mover._same_source)."""
    return '%d:%d:%d:%d:%d' % (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def part_name(name, job_tag):
    """`.<name>.<job>.part`, or a digest of the name when that would be too long."""
    candidate = '.%s.%s.part' % (name, job_tag)
    if len(os.fsencode(candidate)) <= NAME_MAX:
        return candidate
    return '.%s.%s.part' % (hashlib.sha256(os.fsencode(name)).hexdigest()[:32], job_tag)


class Transfer:
    """Per-file operations, called from worker threads."""

    def __init__(self, src_tree, dst_tree, dest_rel, journal, algorithm, verify_readback,
                 buffer_size, checkpoint_size, preserve, on_conflict, special_files, job_tag,
                 same_device, should_stop):
        self.src = src_tree
        self.dst = dst_tree
        self.dest_rel = dest_rel          # source rel path -> destination rel path
        self.journal = journal
        self.algorithm = algorithm
        # Is each copy read back from the disk and hashed? (Else only its size is checked.)
        self.read_back = verify_readback and algorithm != 'none'
        self.buffer_size = buffer_size
        self.checkpoint_size = checkpoint_size
        self.preserve = preserve
        self.on_conflict = on_conflict
        self.special_files = special_files
        self.job_tag = job_tag
        self.same_device = same_device    # st_dev of the destination root
        self.should_stop = should_stop
        # batch_flush (a _durable.BatchFlush, or None): small copies on the
        # filesystem it covers are not flushed one by one; the batch flushes that
        # filesystem once (syncfs) and then calls finish().
        self.batch_flush = None
        self._local = threading.local()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._prefetch_fds = PREFETCH_FDS if soft == resource.RLIM_INFINITY else min(PREFETCH_FDS, soft // 4)
        self._sources = {}       # row id -> prefetched source fd
        self._read_backs = {}    # row id -> part fd, its pages dropped and being read back

    # -- helpers ---------------------------------------------------------------

    def _dfull(self, name):
        """Full destination path of `name` in the directory of the file in hand (errors)."""
        reldir = getattr(self._local, 'dreldir', '')
        return self.dst.full('%s/%s' % (reldir, name) if reldir else name)

    def _buffer(self, size=None):
        """This thread's reusable buffer: a small one for small files, so that
        many workers on many small files stay small in memory."""
        if size is not None and size <= SMALL_BUFFER < self.buffer_size:
            buf = getattr(self._local, 'small', None)
            if buf is None:
                buf = self._local.small = bytearray(SMALL_BUFFER)
            return buf
        buf = getattr(self._local, 'buf', None)
        if buf is None:
            buf = self._local.buf = bytearray(self.buffer_size)
        return buf

    def _lstat_dest(self, dst_dir, dname):
        try:
            return os.lstat(dname, dir_fd=dst_dir)
        except FileNotFoundError:
            return None

    def hash_fd(self, fd, size, sparse, algorithm=None):
        """The recorded-form digest of a file's logical content (thread-safe)."""
        algorithm = algorithm or self.algorithm
        hasher = _hashing.new(algorithm)
        _copy.feed(fd, 0, size, hasher, self._buffer(size), sparse=sparse, should_stop=self.should_stop)
        return _hashing.digest(algorithm, hasher)

    def _open_src(self, src_dir, name, path):
        """open_read() of a source, its errors as MoverErrors naming `path`."""
        try:
            return open_read(src_dir, name)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MoverError('source was replaced by a symbolic link', path, exc.errno)
            raise os_error(exc, 'cannot open source', path)

    def _aligned(self):
        """This thread's buffer for O_DIRECT reads."""
        buf = getattr(self._local, 'aligned', None)
        if buf is None:
            buf = self._local.aligned = _copy.aligned_buffer(self.buffer_size)
        return buf

    def hash_from_device(self, dst_dir, name, size, sparse, algorithm=None, read_fd=None, same_as=None):
        """The digest of what the device holds for a flushed file (None if the
        name is no longer the file of fd `same_as`).

        O_DIRECT reads, past the page cache; `read_fd`: the file opened by
        prefetch_read_back(), whose cached pages were dropped and checked gone
        (so what it reads comes from the device). Where the filesystem refuses
        O_DIRECT, or keeps the data inline in its metadata, the read cannot come
        from the device: noted for the result (self._local.readback)."""
        algorithm = algorithm or self.algorithm
        fd, direct = read_fd, False
        if fd is None:
            fd = _copy.open_direct(dst_dir, name)
            direct = fd is not None
            if fd is None:
                fd = open_read(dst_dir, name)
                _copy.drop_cache(fd)
                self._local.readback = _copy.NO_DIRECT
        try:
            if same_as is not None and not os.path.samestat(os.fstat(fd), os.fstat(same_as)):
                return None
            if 0 < size <= _copy.PAGE and _copy.data_inline(fd):
                self._local.readback = _copy.INLINE
            if not direct:
                return self.hash_fd(fd, size, sparse, algorithm)
            hasher = _hashing.new(algorithm)
            try:
                _copy.feed_direct(fd, 0, size, hasher, self._aligned(), sparse=sparse,
                                  should_stop=self.should_stop)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # an alignment the device refuses (logical blocks above DIRECT_ALIGN)
                self._local.readback = _copy.NO_DIRECT
                rfd = open_read(dst_dir, name)
                try:
                    _copy.drop_cache(rfd)
                    return self.hash_fd(rfd, size, sparse, algorithm)
                finally:
                    os.close(rfd)
            return _hashing.digest(algorithm, hasher)
        finally:
            os.close(fd)

    def same_content(self, src_fd, src_st, dst_dir, dname, dst_st, durable=False):
        """(True, digest) if the existing destination file has the source's content.

        `durable`: a run will count on it (and then remove the source), so the
        destination is first made durable (fsync: another program may have
        written it a moment ago, and left it in the page cache), then read back
        from the disk; metadata that differs is applied and flushed too. Check
        mode and verify pass False and change nothing.
        """
        if not stat.S_ISREG(dst_st.st_mode) or dst_st.st_size != src_st.st_size:
            return False, None
        if (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
            return True, None
        try:
            dfd = open_read(dst_dir, dname)
        except OSError:
            return False, None
        try:
            algorithm = self.algorithm if self.algorithm != 'none' else 'sha256'
            src_digest = self.hash_fd(src_fd, src_st.st_size, _copy.is_sparse(src_st), algorithm)
            if durable:
                _durable.sync_data(dfd, self._dfull(dname))
                dst_digest = self.hash_from_device(dst_dir, dname, dst_st.st_size, _copy.is_sparse(dst_st),
                                                   algorithm, same_as=dfd)
            else:
                dst_digest = self.hash_fd(dfd, dst_st.st_size, _copy.is_sparse(dst_st), algorithm)
            if src_digest != dst_digest:
                return False, None
            if 'mode' in self.preserve or 'times' in self.preserve or 'owner' in self.preserve:
                if _metadata.differs(src_st, dst_st, self.preserve):
                    self._apply(src_st, self.preserve, fd=dfd, path_for_errors=self._dfull(dname))
                    if durable:
                        _durable.sync_data(dfd, self._dfull(dname))
            return True, src_digest
        finally:
            os.close(dfd)

    def in_place(self, row, src_dir, name, path):
        """Recovery of a row the journal says is copied while its source is still
        there: is the destination whole, durable and this source's content? It
        is made durable and read back from the disk (a size and the recorded
        hash; or, without a hash this host can compute, against the source)."""
        dreldir, dname = split(self.dest_rel(row.path))
        self._local.dreldir = dreldir
        dst_dir = self.dst.get(dreldir)
        dst_st = self._lstat_dest(dst_dir, dname)
        if dst_st is None:
            return False
        try:
            src_st = os.lstat(name, dir_fd=src_dir)
        except FileNotFoundError:
            return False
        if row.kind == 'symlink':
            return stat.S_ISLNK(dst_st.st_mode) and \
                os.readlink(dname, dir_fd=dst_dir) == os.readlink(name, dir_fd=src_dir)
        if row.kind == 'special':
            return stat.S_IFMT(dst_st.st_mode) == stat.S_IFMT(src_st.st_mode) and \
                dst_st.st_rdev == src_st.st_rdev
        if not stat.S_ISREG(dst_st.st_mode):
            return False
        recorded = row.hash or ''
        algorithm = recorded_algorithm(recorded)
        if algorithm is None:
            fd = self._open_src(src_dir, name, path)
            try:
                return self.same_content(fd, src_st, dst_dir, dname, dst_st, durable=True)[0]
            finally:
                os.close(fd)
        size = int(row.ident.split(':')[1]) if row.ident else row.size
        return dst_st.st_size == size and self._hashes_to(dst_dir, dname, dst_st, recorded, durable=True)

    def _our_stale_copy(self, row, dst_dir, dname, dst_st):
        """Is the destination the copy this job made of an earlier content of the
        source (recorded as copied, then the source changed before its removal)?
        Then it is ours to replace, not a conflict."""
        return stat.S_ISREG(dst_st.st_mode) and self._hashes_to(dst_dir, dname, dst_st, row.hash or '')

    def _hashes_to(self, dst_dir, dname, dst_st, recorded, durable=False):
        """Does the destination file hash to the `recorded` digest? `durable`:
        flush it first and read it back from the disk."""
        algorithm = recorded_algorithm(recorded)
        if algorithm is None:
            return False
        try:
            dfd = open_read(dst_dir, dname)
        except OSError:
            return False
        try:
            sparse = _copy.is_sparse(dst_st)
            if not durable:
                return self.hash_fd(dfd, dst_st.st_size, sparse, algorithm) == recorded
            _durable.sync_data(dfd, self._dfull(dname))
            return self.hash_from_device(dst_dir, dname, dst_st.st_size, sparse, algorithm,
                                         same_as=dfd) == recorded
        finally:
            os.close(dfd)

    def _may_replace(self, row):
        """May the destination name be taken over whatever is there? With
        on_conflict=overwrite; or for a row the journal says is copied (the
        destination was this job's copy, and it no longer verified)."""
        return self.on_conflict == 'overwrite' or row.state == 'copied'

    def _conflict(self, row, path, what):
        if self.on_conflict == 'skip':
            return Outcome(row, SKIPPED, error='conflict skipped (on_conflict=skip): %s' % what)
        return Outcome(row, FAILED, error=MoverError(
            'conflict: %s; the source was kept (on_conflict=fail)' % what, path))

    # -- dispatch ----------------------------------------------------------------

    def _apply(self, st, preserve, **where):
        """_metadata.apply, noting for run() the mode whose set-id bits it left out."""
        if _metadata.apply(st, preserve, **where):
            self._local.setid_cleared = stat.S_IMODE(st.st_mode)

    def run(self, row, leader=None):
        """Bring `row` to its final destination name (see _run); the Outcome
        says whether the copy lost set-id bits with its owner."""
        self._local.setid_cleared = 0
        self._local.readback = None
        outcome = self._run(row, leader)
        outcome.setid_cleared = self._local.setid_cleared
        outcome.readback = self._local.readback
        return outcome

    def _run(self, row, leader=None):
        """`leader`: (destination path, source inode copied) of the first name
        of the row's hard-link group, already in place: the row is linked to it
        if its name is still that inode (else it was replaced since the scan,
        and is a file of its own)."""
        rel = row.path
        path = self.src.full(rel)
        try:
            reldir, name = split(rel)
            dreldir, dname = split(self.dest_rel(rel))
            self._local.dreldir = dreldir
            src_dir = self.src.get(reldir)
            try:
                st = os.lstat(name, dir_fd=src_dir)
            except FileNotFoundError:
                return self._vanished(row, dreldir, dname)
            except OSError as exc:
                raise os_error(exc, 'cannot stat source', path)
            kind = {stat.S_IFREG: 'file', stat.S_IFLNK: 'symlink'}.get(stat.S_IFMT(st.st_mode), 'special')
            if kind != row.kind or stat.S_ISDIR(st.st_mode):
                return Outcome(row, RETRY, error=MoverError(
                    'source changed type since it was scanned (%s)' % special_name(st.st_mode)
                    if kind == 'special' else 'source changed type since it was scanned', path))
            if kind == 'special' and (self.special_files == 'skip' or stat.S_ISSOCK(st.st_mode)):
                return Outcome(row, SKIPPED, error=entry_state(kind, st, self.special_files)[1])
            dst_dir = self.dst.get(dreldir)
            if st.st_dev == self.same_device:
                outcome = self._rename(row, st, src_dir, name, dst_dir, dname, path)
                if outcome is not None:
                    return outcome
            if kind == 'symlink':
                return self._symlink(row, st, src_dir, name, dst_dir, dname, path)
            if kind == 'special':
                return self._special(row, st, src_dir, name, dst_dir, dname, path)
            if leader is not None and st.st_ino == row.ino == leader[1] and st.st_dev == row.dev:
                return self._link(row, st, src_dir, name, dst_dir, dname, path, leader[0])
            return self._copy(row, st, src_dir, name, dst_dir, dname, path)
        except _copy.Interrupted:
            return Outcome(row, INTERRUPTED)
        except _durable.DestinationTaken:
            return self._conflict(row, path, 'an entry appeared at the destination while the source was '
                                  'being moved, and was left as it is')
        except MoverError as exc:
            return Outcome(row, FAILED, error=exc)
        except OSError as exc:
            return Outcome(row, FAILED, error=os_error(exc, 'cannot move', path))

    def _vanished(self, row, dreldir, dname):
        """The source is gone: renamed by a run that died before its journal commit?"""
        try:
            dst_st = self._lstat_dest(self.dst.get(dreldir), dname)
        except MoverError:
            dst_st = None
        if dst_st is not None and row.ino and dst_st.st_ino == row.ino and dst_st.st_dev == self.same_device:
            return Outcome(row, MOVED, method='rename', nbytes=0)
        return Outcome(row, SKIPPED, error='source vanished before it was moved (deleted by someone else)')

    # -- same filesystem ---------------------------------------------------------

    def _rename(self, row, st, src_dir, name, dst_dir, dname, path):
        dst_st = self._lstat_dest(dst_dir, dname)
        if dst_st is not None and (dst_st.st_dev, dst_st.st_ino) == (st.st_dev, st.st_ino):
            # Two names of one inode: rename(2) would do nothing and keep both.
            return Outcome(row, IDENTICAL, method='identical', src_ident=ident(st))
        if dst_st is not None:
            if stat.S_ISDIR(dst_st.st_mode):
                return self._conflict(row, path, 'a directory is in the way at the destination')
            if row.kind == 'file':
                fd = self._open_src(src_dir, name, path)
                try:
                    same, digest = self.same_content(fd, st, dst_dir, dname, dst_st, durable=True)
                finally:
                    os.close(fd)
                if same:
                    return Outcome(row, IDENTICAL, method='identical', digest=digest, src_ident=ident(st))
            elif row.kind == 'symlink' and stat.S_ISLNK(dst_st.st_mode):
                target = os.readlink(dname, dir_fd=dst_dir)
                if os.readlink(name, dir_fd=src_dir) == target:
                    return Outcome(row, IDENTICAL, method='identical', digest=link_digest(target),
                                   src_ident=ident(st))
            if self.on_conflict != 'overwrite':
                return self._conflict(row, path, 'the destination exists with different content')
        # what the file counts (its data: holes are not bytes moved), read before it is renamed
        counted = _copy.data_size_at(src_dir, name, st) if row.kind == 'file' else 0
        counted = st.st_size if counted is None else counted
        try:
            _durable.rename_into_place(src_dir, name, dst_dir, dname, self._dfull(dname),
                                       replace=self._may_replace(row))
        except _durable.DestinationTaken:
            raise
        except MoverError as exc:
            if exc.errno == errno.EXDEV:
                return None          # a mount point inside the tree: copy instead
            raise
        _faults.point('after_rename')
        # a link's target is recorded as found at its new name (what was moved)
        digest = link_digest(os.readlink(dname, dir_fd=dst_dir)) if row.kind == 'symlink' else None
        return Outcome(row, MOVED, method='rename', digest=digest, nbytes=counted, src_ident=ident(st))

    # -- across filesystems ------------------------------------------------------

    def _copy(self, row, st0, src_dir, name, dst_dir, dname, path):
        fd = self._sources.pop(row.id, None)
        if fd is None:
            fd = self._open_src(src_dir, name, path)
        part = None
        part_fd = None
        keep_part = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_ino != st0.st_ino:
                return Outcome(row, RETRY, error=MoverError('source was replaced while it was opened', path))
            dst_st = self._lstat_dest(dst_dir, dname)
            # May the final rename replace what is at the name? Only with
            # on_conflict=overwrite, or this job's own stale copy found there.
            replace = self._may_replace(row)
            if dst_st is not None:
                if stat.S_ISDIR(dst_st.st_mode):
                    return self._conflict(row, path, 'a directory is in the way at the destination')
                same, digest = self.same_content(fd, st, dst_dir, dname, dst_st, durable=True)
                if same:
                    return Outcome(row, IDENTICAL, method='identical', digest=digest, src_ident=ident(st))
                if not replace and not self._our_stale_copy(row, dst_dir, dname, dst_st):
                    return self._conflict(row, path, 'the destination exists with different content')
                replace = True
            part = part_name(dname, self.job_tag)
            src_ident = ident(st)
            resume_at = 0
            if row.state == 'copying' and row.checkpoint and row.ident == src_ident:
                part_st = self._lstat_dest(dst_dir, part)
                if part_st is not None and stat.S_ISREG(part_st.st_mode) and part_st.st_size >= row.checkpoint:
                    resume_at = row.checkpoint
            part_fd = _durable.create_part(dst_dir, part, resume_at, self._dfull(part))
            sparse = _copy.is_sparse(st)
            buf = self._buffer(st.st_size)
            hasher = _hashing.new(self.algorithm)
            if resume_at:
                # The part's prefix is durable; hash the source's prefix (reading
                # is cheaper than writing) so the final hash covers the whole source.
                _copy.feed(fd, 0, resume_at, hasher, buf, sparse=sparse, should_stop=self.should_stop)
            state = {'last': resume_at}

            checkpoint = self._checkpointer(
                row, src_ident, state, lambda: _durable.sync_data(part_fd, self._dfull(part), checkpoint=True))

            pipeline = None
            try:
                if st.st_size - resume_at > PIPELINE_MIN_BUFFERS * self.buffer_size:
                    pipeline = self._pipeline(fd, part_fd, dst_dir, part, path, row, src_ident, state)
                    pipeline.copy(hasher, resume_at, st.st_size, sparse,
                                  lambda f: _durable.sync_data(f, self._dfull(part), checkpoint=True))
                else:
                    _copy.feed(fd, resume_at, st.st_size, hasher, buf, sink=part_fd, sparse=sparse,
                               progress=checkpoint, should_stop=self.should_stop, source_path=path)
            except _copy.Interrupted:
                keep_part = state['last'] > 0     # resumable from its checkpoint
                _close_reader(pipeline)
                raise
            except BaseException:
                _close_reader(pipeline)
                raise
            if sparse and os.fstat(part_fd).st_size != st.st_size:
                os.ftruncate(part_fd, st.st_size)     # a trailing hole
            copied = _copy.data_size(fd, st, resume_at)     # the bytes written: holes are not
            _faults.point('after_part_write')
            xattrs = _metadata.read_xattrs(fd=fd) if 'xattrs' in self.preserve else None
            self._apply(st, self.preserve, fd=part_fd, xattrs=xattrs, path_for_errors=self._dfull(dname))
            if self.batch_flush is not None and pipeline is None and self.batch_flush.covers(dst_dir):
                # Flushed with the rest of the batch (syncfs), then finish()ed.
                staged = (split(row.path)[0], name, split(self.dest_rel(row.path))[0], dname, part, st, sparse,
                          replace, _file_id(os.fstat(part_fd), ctime=True))
                part = None
                return Outcome(row, STAGED, method='copy', digest=_hashing.digest(self.algorithm, hasher),
                               nbytes=copied, src_ident=src_ident, staged=staged)
            _durable.sync_data(part_fd, self._dfull(part))
            _faults.point('after_part_sync')
            digest = _hashing.digest(self.algorithm, hasher)
            read_back = None
            if pipeline is not None and pipeline.verify:
                try:
                    read_back = _hashing.digest(self.algorithm, pipeline.finish_verify(st.st_size))
                finally:
                    _close_reader(pipeline)
            self._verify(part_fd, dst_dir, part, st, sparse, digest, row.path, path, read_back)
            _faults.point('after_verify')
            self._check_unchanged(fd, src_dir, name, st, path)
            # part_fd stays open until the rename is checked: its inode number cannot go to another file
            _durable.rename_into_place(dst_dir, part, dst_dir, dname, self._dfull(dname), replace=replace,
                                       expect=_file_id(os.fstat(part_fd)))
            part = None
            os.close(part_fd)
            part_fd = None
            _faults.point('after_rename')
            return Outcome(row, MOVED, method='copy', digest=digest, nbytes=copied, src_ident=src_ident)
        except MoverError as exc:
            if isinstance(exc, _copy.SourceChanged):
                return Outcome(row, RETRY, error=exc)
            raise
        finally:
            os.close(fd)
            if part_fd is not None:
                os.close(part_fd)
            if part is not None and not keep_part:
                _durable.remove_quietly(dst_dir, part)

    def prefetch(self, rows):
        """Open a batch's small source files and start reading them all at once
        (_copy.prefetch). Their copies take the fds from here; release() closes
        what is left."""
        for row in rows:
            if len(self._sources) >= self._prefetch_fds:
                break
            if row.kind == 'file' and 0 < row.size <= SMALL_BUFFER:
                fd = self._prefetch(self.src, *split(row.path))
                if fd is not None:
                    self._sources[row.id] = fd

    def prefetch_read_back(self, staged):
        """After the batch's flush: drop the cached pages of every STAGED part
        up to READBACK_PREFETCH_MAX bytes (without holes), check that every one
        of them is gone (_copy.dropped, which starts reading them from the
        device), and have the rest of each read at once, for finish() to verify:
        many reads queued at the device at once cost a fraction of one O_DIRECT
        read after another. A part with a page that stayed, and larger or
        sparse parts, are read with O_DIRECT."""
        if not self.read_back:
            return
        for outcome in staged:
            if len(self._read_backs) >= self._prefetch_fds:
                break
            dreldir, part, st, sparse = outcome.staged[2], outcome.staged[4], outcome.staged[5], outcome.staged[6]
            if sparse or not 0 < st.st_size <= READBACK_PREFETCH_MAX:
                continue
            try:
                fd = open_read(self.dst.get(dreldir), part)
            except (OSError, MoverError):
                continue          # finish() meets the problem, and reports it
            _copy.drop_cache(fd)
            if not _copy.dropped(fd, st.st_size):
                os.close(fd)
                continue
            _copy.prefetch(fd)
            self._read_backs[outcome.row.id] = fd

    def release(self):
        """Close the prefetched fds no transfer took (end of a batch)."""
        for fds in (self._sources, self._read_backs):
            while fds:
                os.close(fds.popitem()[1])

    @staticmethod
    def _prefetch(tree, reldir, name):
        try:
            fd = open_read(tree.get(reldir), name)
        except (OSError, MoverError):
            return None       # the transfer itself meets the problem, and reports it
        _copy.prefetch(fd)
        return fd

    def finish(self, outcome):
        """A STAGED copy, after the batch's flush: verify, check the source, rename."""
        row = outcome.row
        reldir, name, dreldir, dname, part, st, sparse, replace, ours = outcome.staged
        self._local.dreldir = dreldir
        self._local.readback = None
        path = self.src.full(row.path)
        dst_dir = None
        try:
            dst_dir = self.dst.get(dreldir)
            src_dir = self.src.get(reldir)
            self._verify(None, dst_dir, part, st, sparse, outcome.digest, row.path, path,
                         read_fd=self._read_backs.pop(row.id, None))
            _faults.point('after_verify')
            try:
                named = os.lstat(name, dir_fd=src_dir)
            except FileNotFoundError:
                named = None
            if named is None or ident(named) != outcome.src_ident:
                raise _copy.SourceChanged('source changed while it was copied (it will be copied again '
                                          'next run; the source was kept)', path, errno.EAGAIN)
            _durable.rename_into_place(dst_dir, part, dst_dir, dname, self._dfull(dname), replace=replace,
                                       expect=ours)
            _faults.point('after_rename')
            moved = Outcome(row, MOVED, method='copy', digest=outcome.digest, nbytes=outcome.bytes,
                            src_ident=outcome.src_ident, setid_cleared=outcome.setid_cleared)
            moved.readback = self._local.readback
            return moved
        except (MoverError, OSError, _copy.Interrupted) as exc:
            if dst_dir is not None:
                _durable.remove_quietly(dst_dir, part)
            if isinstance(exc, _copy.Interrupted):
                return Outcome(row, INTERRUPTED)
            if isinstance(exc, _durable.DestinationTaken):
                return self._conflict(row, path, 'an entry appeared at the destination while the source '
                                      'was being moved, and was left as it is')
            if isinstance(exc, _copy.SourceChanged):
                return Outcome(row, RETRY, error=exc)
            return Outcome(row, FAILED, error=os_error(exc, 'cannot move', path))

    def discard(self, outcome):
        """A STAGED copy whose batch flush failed: its part is removed (a
        failed flush is never retried as if the data were safe)."""
        dreldir, part = outcome.staged[2], outcome.staged[4]
        try:
            _durable.remove_quietly(self.dst.get(dreldir), part)
        except MoverError:
            pass

    def _checkpointer(self, row, src_ident, state, flush=None):
        """progress(pos) of a large copy: every checkpoint_size bytes, make the part
        durable (`flush`, unless the caller just did) and record the offset."""
        def checkpoint(pos):
            if self.checkpoint_size and pos - state['last'] >= self.checkpoint_size:
                if flush is not None:
                    flush()
                self.journal.checkpoint(row.id, pos, src_ident)
                state['last'] = pos
                _faults.point('after_checkpoint')
        return checkpoint

    def _pipeline(self, fd, part_fd, dst_dir, part, path, row, src_ident, state):
        """An overlapped copy: flushes every PIPELINE_FLUSH bytes (read back meanwhile),
        journal checkpoints every checkpoint_size bytes."""
        verify = self.read_back
        read_fd, direct = None, False
        if verify:
            read_fd = _copy.open_direct(dst_dir, part)
            direct = read_fd is not None
            if not direct:
                read_fd = open_read(dst_dir, part)
                self._local.readback = _copy.NO_DIRECT

        flushed = self._checkpointer(row, src_ident, state)   # the pipeline flushed before calling it
        flush_every = min(PIPELINE_FLUSH, self.checkpoint_size) if self.checkpoint_size else PIPELINE_FLUSH
        # Chunks small enough to keep the reader, the writer and the verifier all
        # busy: large ones make them take turns (benchmarks/: 2 GiB ext4 -> xfs,
        # 1 MiB chunks x 4 ran in ~6.5 s, 16 MiB x 3 in ~10 s).
        chunk = min(self.buffer_size, PIPELINE_CHUNK)
        return _copy.Pipeline(fd, part_fd, read_fd, lambda: _hashing.new(self.algorithm), chunk,
                              flush_every, on_flush=flushed, verify=verify, should_stop=self.should_stop,
                              source_path=path, pool=PIPELINE_POOL, direct=direct)

    def _verify(self, part_fd, dst_dir, part, st, sparse, digest, rel, path, read_back=None,
                read_fd=None):
        """Compare what is on disk under the part's name with the source's hash.

        `read_back`: the digest of the read-back already done by a Pipeline.
        `read_fd`: the part opened by prefetch_read_back() (only when reading
        back), its pages dropped after the flush: what is cached now was read
        from the disk. Closed here."""
        if not self.read_back:
            size = os.fstat(part_fd).st_size if part_fd is not None else os.lstat(part, dir_fd=dst_dir).st_size
            if size != st.st_size:
                raise MoverError('verification failed: the copy has %d bytes, the source %d'
                                 % (size, st.st_size), path, errno.EIO)
            if not _faults.corrupt(rel):
                return
            raise MoverError('verification failed: injected corruption', path, errno.EIO)
        if read_back is not None:
            actual = read_back
        else:
            actual = self.hash_from_device(dst_dir, part, st.st_size, sparse, read_fd=read_fd)
        if _faults.corrupt(rel):
            actual = 'corrupt:' + actual
        if actual != digest:
            raise MoverError('verification failed: the copy read back from disk hashes to %s, '
                             'the source to %s (%s); the copy was discarded'
                             % (actual[:24], digest[:24], self.algorithm), path, errno.EIO)

    def _check_unchanged(self, fd, src_dir, name, st, path):
        now = os.fstat(fd)
        try:
            named = os.lstat(name, dir_fd=src_dir)
        except FileNotFoundError:
            named = None
        if ident(now) != ident(st) or named is None or named.st_ino != st.st_ino:
            raise _copy.SourceChanged('source changed while it was copied (it will be copied again '
                                      'next run; the source was kept)', path, errno.EAGAIN)

    def _link(self, row, st, src_dir, name, dst_dir, dname, path, leader_dest):
        """A further name of a hard-link group whose first name is already in place."""
        lreldir, lname = split(leader_dest)
        ldir = self.dst.get(lreldir)
        dst_st = self._lstat_dest(dst_dir, dname)
        try:
            lst = os.lstat(lname, dir_fd=ldir)
        except OSError as exc:
            raise os_error(exc, 'hard link target missing at the destination', self.dst.full(leader_dest))
        if dst_st is not None:
            if (dst_st.st_dev, dst_st.st_ino) == (lst.st_dev, lst.st_ino):
                return Outcome(row, IDENTICAL, method='identical', src_ident=ident(st))
            if not self._may_replace(row):
                return self._conflict(row, path, 'the destination exists and is not the same hard link')
        part = part_name(dname, self.job_tag)
        _durable.remove_quietly(dst_dir, part)
        try:
            os.link(lname, part, src_dir_fd=ldir, dst_dir_fd=dst_dir, follow_symlinks=False)
        except OSError as exc:
            raise os_error(exc, 'cannot create hard link', self._dfull(dname))
        try:
            # the part must be the first name's copy (alive, so its number is its own) until it is in place
            _durable.rename_into_place(dst_dir, part, dst_dir, dname, self._dfull(dname),
                                       replace=self._may_replace(row), expect=_file_id(lst))
        except MoverError:
            _durable.remove_quietly(dst_dir, part)
            raise
        _faults.point('after_rename')
        return Outcome(row, MOVED, method='link', src_ident=ident(st))

    def _symlink(self, row, st, src_dir, name, dst_dir, dname, path):
        try:
            target = os.readlink(name, dir_fd=src_dir)
        except OSError as exc:
            raise os_error(exc, 'cannot read symbolic link', path)
        dst_st = self._lstat_dest(dst_dir, dname)
        if dst_st is not None:
            if stat.S_ISLNK(dst_st.st_mode) and os.readlink(dname, dir_fd=dst_dir) == target:
                return Outcome(row, IDENTICAL, method='identical', digest=link_digest(target),
                               src_ident=ident(st))
            if stat.S_ISDIR(dst_st.st_mode) or not self._may_replace(row):
                return self._conflict(row, path, 'the destination exists and is not the same link')
        part = part_name(dname, self.job_tag)
        _durable.remove_quietly(dst_dir, part)
        try:
            os.symlink(target, part, dir_fd=dst_dir)
            made = _file_id(os.lstat(part, dir_fd=dst_dir))
            xattrs = _metadata.read_xattrs(dir_fd=src_dir, name=name) if 'xattrs' in self.preserve else None
            _metadata.apply(st, self.preserve, dir_fd=dst_dir, name=part, xattrs=xattrs,
                            path_for_errors=self._dfull(dname))
            if os.readlink(name, dir_fd=src_dir) != target:
                raise _copy.SourceChanged('symbolic link changed while it was copied', path, errno.EAGAIN)
            ours = _file_id(os.lstat(part, dir_fd=dst_dir), ctime=True)
            if ours[:2] != made:
                raise _durable.PartReplaced('the symbolic link made at the destination was replaced by another '
                                            'process before its rename; the source was kept',
                                            self._dfull(dname), errno.ESTALE)
            _durable.rename_into_place(dst_dir, part, dst_dir, dname, self._dfull(dname),
                                       replace=self._may_replace(row), expect=ours)
        except _copy.SourceChanged as exc:
            _durable.remove_quietly(dst_dir, part)
            return Outcome(row, RETRY, error=exc)
        except OSError as exc:
            _durable.remove_quietly(dst_dir, part)
            raise os_error(exc, 'cannot create symbolic link', self._dfull(dname))
        except MoverError:
            _durable.remove_quietly(dst_dir, part)
            raise
        _faults.point('after_rename')
        return Outcome(row, MOVED, method='symlink', digest=link_digest(target), src_ident=ident(st))

    def _special(self, row, st, src_dir, name, dst_dir, dname, path):
        """special_files=recreate: a FIFO or device node made anew at the destination."""
        dst_st = self._lstat_dest(dst_dir, dname)
        if dst_st is not None:
            if stat.S_IFMT(dst_st.st_mode) == stat.S_IFMT(st.st_mode) and dst_st.st_rdev == st.st_rdev:
                return Outcome(row, IDENTICAL, method='identical', src_ident=ident(st))
            if stat.S_ISDIR(dst_st.st_mode) or not self._may_replace(row):
                return self._conflict(row, path, 'the destination exists and is not the same special file')
        part = part_name(dname, self.job_tag)
        _durable.remove_quietly(dst_dir, part)
        node = None
        try:
            os.mknod(part, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dst_dir)
            node = _open_node(dst_dir, part, st, self._dfull(dname))
            # Through the node's fd, never its name (a link swapped in under it
            # would be followed); the mode is always the source's.
            self._apply(st, [p for p in self.preserve if p != 'mode'] + ['mode'], node_fd=node,
                        path_for_errors=self._dfull(dname))
            # the rename checks that the part's name still holds the node we made
            _durable.rename_into_place(dst_dir, part, dst_dir, dname, self._dfull(dname),
                                       replace=self._may_replace(row), expect=_file_id(os.fstat(node)))
        except OSError as exc:
            _durable.remove_quietly(dst_dir, part)
            raise os_error(exc, 'cannot recreate %s' % special_name(st.st_mode), self._dfull(dname))
        except MoverError:
            _durable.remove_quietly(dst_dir, part)
            raise
        finally:
            if node is not None:
                os.close(node)
        _faults.point('after_rename')
        return Outcome(row, MOVED, method='special', src_ident=ident(st))


def _open_node(dir_fd, name, st, path_for_errors):
    """O_PATH fd of the FIFO or device node just made as `name`: neither the node
    itself is opened (a tape would rewind, a FIFO block) nor a link followed.
    It must be the node made: the source's type and device number, ours, with
    one name (not a link or another's node swapped in, nor a hard link to one)."""
    if not O_PATH:
        raise MoverError('special_files=recreate needs O_PATH (Linux)', path_for_errors, errno.ENOSYS)
    fd = os.open(name, O_PATH | _durable.O_NOFOLLOW | _durable.O_CLOEXEC, dir_fd=dir_fd)
    made = os.fstat(fd)
    if (stat.S_IFMT(made.st_mode), made.st_rdev, made.st_uid, made.st_nlink) != \
            (stat.S_IFMT(st.st_mode), st.st_rdev, os.geteuid(), 1):
        os.close(fd)
        raise MoverError('the special file made at the destination was replaced by another entry before its '
                         'metadata was set; it was removed and the source kept', path_for_errors, errno.EEXIST)
    return fd
