"""What every console command does with a user's mistake: one line on stderr and exit status 2.

A missing file, a bad config.json key, a checkpoint that does not fit, a server that does not answer:
the user needs the message, not the 30 lines of traceback above it. `SENTIMENT_DEBUG=1` shows the
traceback as well, for reporting a bug. Errors that are not a user's (bugs) keep their traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_VARIABLE = "SENTIMENT_DEBUG"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Imported when a command fails, not when it starts: the classes live in modules some commands never load."""
    import requests

    from sentiment.ops.local_server import ServerError
    from sentiment.ops.management import ManagementError
    from sentiment.serving.config import ConfigError
    from sentiment.training.import_checkpoint import CheckpointError

    return (
        ConfigError,
        CheckpointError,
        ManagementError,
        ServerError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        requests.ConnectionError,
        requests.Timeout,
    )


def describe(error: BaseException) -> str:
    import requests

    if isinstance(error, requests.ConnectionError):
        return f"no server answers at {getattr(error.request, 'url', 'its address')}: is it running? (`make run`)"
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return str(error) or type(error).__name__


def command(main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a console command's `main`: a user's mistake becomes `NAME: message` and exit 2."""

    @functools.wraps(main)
    def run() -> None:
        try:
            main()
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        except Exception as error:
            if os.environ.get(DEBUG_VARIABLE) or not isinstance(error, _user_errors()):
                raise
            name = Path(sys.argv[0]).name or "sentiment"
            sys.stderr.write(f"{name}: {describe(error)} (set {DEBUG_VARIABLE}=1 for the traceback)\n")
            sys.exit(2)

    return run
