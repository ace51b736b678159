"""User-facing errors: the entry points print their message as one line and exit non-zero."""


class GrokError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""
