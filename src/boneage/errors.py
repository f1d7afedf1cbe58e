"""The one exception a user's mistake raises: the CLI prints it as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input: a missing file, an unreadable image, a malformed CSV, a checkpoint that is not one.

    The message names the file (and row) and the problem; no traceback is shown for it.
    """
