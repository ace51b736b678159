"""User-facing errors: the entry points print their message as one line and exit non-zero."""


class GrokError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


def brief(exc: BaseException, without_message: str = "", limit: int = 120) -> str:
    """`Type: first sentence` of an exception (`without_message` when it has none), for a
    one-line message: torch's messages go on for a paragraph of advice."""
    first = (str(exc).splitlines() or [""])[0].split(". ")[0].rstrip(".")[:limit]
    first = first or without_message
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
