"""The one exception type a user sees as a one-line message (never a traceback)."""


class EdgeDistillError(Exception):
    """A problem with the user's input or environment, not a bug.

    The CLI prints ``error: <message>`` on one line and exits with status 2.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, with what the user can do next in the message.

    A KeyboardInterrupt, so every ``finally`` and every atomic writer cleans up as for Ctrl-C;
    the CLI prints ``error: <message>`` and exits with ``128 + signal``."""

    def __init__(self, message: str = "interrupted", exit_code: int = 130) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def __str__(self) -> str:
        return self.message

    def with_hint(self, hint: str) -> "Interrupted":
        return Interrupted(f"{self.message}; {hint}", self.exit_code)

    @classmethod
    def of(cls, exc: BaseException) -> "Interrupted":
        return exc if isinstance(exc, Interrupted) else cls()
