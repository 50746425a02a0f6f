"""Exceptions that carry the exit code the CLI contract promises (see the README)."""


class MedsegError(Exception):
    """Base class: an error the CLI reports as a message, without a traceback."""

    exit_code = 1


class InputError(MedsegError):
    """Bad input data or bad arguments: nothing was changed, exit code 2."""

    exit_code = 2


class Interrupted(MedsegError):
    """Ctrl+C or SIGTERM: a checkpoint was saved and the message says how to resume, exit code 130."""

    exit_code = 130
