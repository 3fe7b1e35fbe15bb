"""The one exception type for user mistakes.

Anything raised as `KftError` is the user's to fix: the CLI prints its message as one line and
exits with `exit_code` (2 unless said otherwise). Every other exception is a bug in kft.
"""


class KftError(Exception):
    """A user mistake or an unreachable resource, with an actionable one-line message."""

    exit_code = 2


class ConfigError(KftError):
    """A config key, value or type that kft cannot run with."""
