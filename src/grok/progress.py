"""When to draw progress bars (training, analysis scans, trajectory blocks)."""

from __future__ import annotations

import os
import sys


def progress_enabled(wanted: bool) -> bool:
    """Only on an interactive terminal: never in CI logs or when stderr is a file or a pipe
    (cluster logs, tests)."""
    return wanted and not os.environ.get("CI") and sys.stderr.isatty()
