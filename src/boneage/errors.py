"""The one exception a user's mistake raises: the CLI prints it as a single line and exits non-zero."""


def printable(text: str) -> str:
    """Control and format characters shown as escapes (ESC as \\x1b, a newline as \\n): a file name, a DICOM tag or a
    library's message is the user's or a stranger's text, and raw it could colour, rewrite or split the one line a
    terminal, a log or the web page shows."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


MAX_MESSAGE = 1000  # characters: a message stays one readable line whatever it quotes


def shown(value: object, limit: int = 80) -> str:
    """A value quoted in a message (repr for text), at most `limit` characters: a megabyte form field or file name
    is not echoed back whole."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UserError(Exception):
    """Bad input: a missing file, an unreadable image, a malformed CSV, a checkpoint that is not one.

    The message names the file (and row) and the problem; no traceback is shown for it.
    """

    def __init__(self, message: object = "") -> None:
        text = printable(str(message))
        super().__init__(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…")
