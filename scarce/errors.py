"""The one exception type a user can cause, and how the command line reports it."""

from __future__ import annotations


class ScarceError(Exception):
    """A problem with the user's input or environment, told in one sentence.

    The message names the file or field and says what to do. The command line
    prints it without a traceback and exits with ``EXIT_USER_ERROR``.
    """


class CannotWrite(ScarceError):
    """An output could not be written (disk full, file-size limit, read-only or forbidden folder).

    Unlike other errors of one study cell, it stops the whole study: every later cell would fail
    the same way. Nothing finished is lost; the same command resumes once there is room.
    """


EXIT_USER_ERROR = 2
