"""Exceptions with messages meant for people.

Every error that bad input can cause (a missing folder, a truncated PNG, a label id out of range, a
checkpoint from another model) is raised as a subclass of :class:`NpdgError`. The CLI prints its
message and exits with status 2; the dashboard shows it with ``st.error``. A bare traceback means a
bug in npdg, not in the user's input.
"""

from __future__ import annotations


class NpdgError(Exception):
    """Base class for errors caused by the user's input or environment."""


class DataError(NpdgError):
    """A dataset, image or label file is missing, unreadable or malformed."""


class ConfigError(NpdgError):
    """A configuration value, command-line option or argument is invalid."""


class StorageError(NpdgError, OSError):
    """A file could not be written (disk full, no permission): the message names the path and what to do.

    Also an :class:`OSError`, so code that handles I/O failures generically still catches it.
    """
