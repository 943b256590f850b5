# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Errors as values: a path, an errno and a plain sentence.

PRIVATE to the durable.mover collection; not a public API.
"""

from __future__ import annotations

import errno as _errno
import os
import re

# Errors that say the destination as a whole cannot take more data: going on
# with the next file would fail the same way, so the run stops after rolling
# back the file in hand.
FATAL_DEST_ERRNOS = frozenset((_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS))


# Characters a name may hold that would break a line, a table cell or a
# terminal: C0 controls (newline, tab, escape...), DEL and C1 controls. The
# reports (_report.one_line) escape the same set the same way.
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f]')


def display_path(path):
    """A path (str with surrogates, or bytes) as one line of printable text,
    the same wherever it is shown (result, messages, audit log, reports): a
    byte that is not UTF-8 and a control character are written \\xNN."""
    if isinstance(path, str):
        path = os.fsencode(path)
    text = path.decode('utf-8', 'backslashreplace')
    return _CONTROL.sub(lambda match: '\\x%02x' % ord(match.group()), text)


class MoverError(Exception):
    """One failed operation: what was attempted, on which path, and why."""

    def __init__(self, message, path=None, errno=None, fatal=False):
        super().__init__(message)
        self.message = message
        self.path = path
        self.errno = errno
        # fatal: stop the run (e.g. the destination is full or read-only)
        self.fatal = fatal or (errno in FATAL_DEST_ERRNOS)

    def __str__(self):
        text = self.message
        if self.path is not None:
            text = '%s: %s' % (text, display_path(self.path))
        if self.errno is not None:
            text = '%s: %s' % (text, os.strerror(self.errno))
        return text


def os_error(exc, what, path=None):
    """Turn an OSError raised while doing `what` on `path` into a MoverError."""
    if isinstance(exc, MoverError):
        return exc
    return MoverError(what, path=path if path is not None else exc.filename,
                      errno=getattr(exc, 'errno', None))


class JobLockedError(MoverError):
    """Another process holds the job's lock."""


class JournalError(MoverError):
    """The journal cannot be used (corrupt, foreign, too new)."""


class InputError(MoverError):
    """The options describe a move that must not be attempted."""
