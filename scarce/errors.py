"""The one exception type a user can cause, and how the command line reports it."""


class ScarceError(Exception):
    """A problem with the user's input or environment, told in one sentence.

    The message names the file or field and says what to do. The command line
    prints it without a traceback and exits with ``EXIT_USER_ERROR``.
    """


EXIT_USER_ERROR = 2
