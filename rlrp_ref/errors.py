"""Errors a user can act on."""


class UserError(ValueError):
    """Bad input from a user: the CLI prints its one-line message and exits 2."""
