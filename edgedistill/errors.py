"""The one exception type a user sees as a one-line message (never a traceback)."""


class EdgeDistillError(Exception):
    """A problem with the user's input or environment, not a bug.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """
