"""One exception type whose message names the problem and the fix."""


class LinesideError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits non-zero.

    Every message says what is wrong and what to do about it.
    """

    exit_code = 2


class ImageReadError(LinesideError):
    """An image file or payload that cannot be decoded; carries the offending path."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")
