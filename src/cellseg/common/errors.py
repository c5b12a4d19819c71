"""Errors that carry a message meant for the user, not a traceback."""


class DataError(ValueError):
    """Bad input data; the message names the offending file and what is wrong with it."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the config key."""
