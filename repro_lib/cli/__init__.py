"""``repro-lib``: commands over the package's functions, grouped by what they do.

- ``running``: reproduce, sweep, bench (they take the shared batch options);
- ``culprit``: bisect, the culprit search over versions or commits (batch options too);
- ``analysis``: report, merge, evidence;
- ``housekeeping``: clean, engine start/stop/status.

The entry point is ``repro_lib.cli:main``; importing the command modules attaches
their commands to it. Each command imports what it runs when it runs, so
``repro-lib --help`` starts fast.
"""

from . import analysis, culprit, housekeeping, running  # noqa: F401  (importing a module adds its commands)
from .base import EXIT_CODES, EXIT_INTERRUPTED, EXIT_MISSING_LAYER, handle_errors, main

__all__ = ["EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_MISSING_LAYER", "handle_errors", "main"]
