"""Errors the user can act on.

Every failure a user can fix is an :class:`LsafError` whose message is one sentence saying what was
wrong and what to do. The CLI prints that sentence (no traceback unless ``--debug``) and exits with
``exit_code``: 2 for bad input, 1 for anything else.
"""

from __future__ import annotations


class LsafError(Exception):
    """A failure explained in one sentence for the user."""

    exit_code = 1


class BadInputError(LsafError):
    """The user's input (flags, config, files, model) cannot be used as given."""

    exit_code = 2


class UnknownPluginError(BadInputError):
    """A plugin name that no registered plugin has."""


class UnsupportedArchitectureError(BadInputError):
    """No registered architecture plugin understands the model's layout."""


class PluginError(LsafError):
    """A plugin raised while doing its job; the message names the plugin and its package."""
