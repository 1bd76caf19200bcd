"""Exit codes and the one-line error every ``ispdc`` command prints."""
from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
"""A stage failed its own gate (parity, quality budget): no bundle is written."""
EXIT_BAD_INPUT = 2
"""Bad input (a recipe key, a value, a data file, a bundle): one line naming it, never a traceback."""


def fail(message: str, code: int) -> int:
    print(f"ispdc: error: {message}", file=sys.stderr)
    return code
