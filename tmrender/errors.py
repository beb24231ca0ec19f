"""Errors that reach the user as one line.

`UserInputError` is anything the user can fix (a missing file, audio that cannot be
decoded, an unwritable folder): the CLI prints its message and exits with code 2.
Everything else is an internal error: exit code 1, traceback only with `--debug`.
"""


class UserInputError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 2)."""


class MediaError(UserInputError):
    """A media file that ffmpeg cannot read or write; carries ffmpeg's own last words."""
