"""The one exception type a user sees as a one-line message (never a traceback)."""


class EdgeDistillError(Exception):
    """A problem with the user's input or environment, not a bug.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the user can do next in the message.

    A KeyboardInterrupt, so every ``finally`` and every atomic writer cleans up as for a plain
    Ctrl-C; the CLI prints ``error: <message>`` and exits with status 130 (SIGTERM has its own
    handler in the CLI, which exits with 143 after the same cleanup and message)."""

    exit_code = 130

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def with_hint(self, hint: str) -> "Interrupted":
        return Interrupted(f"{self.message}; {hint}")

    @classmethod
    def of(cls, exc: BaseException) -> "Interrupted":
        return exc if isinstance(exc, Interrupted) else cls()
