"""What the ``python -m tripled_tf.X`` entry points share (no TensorFlow import)."""
from __future__ import annotations

import os
import sys


def exit_with_error(message: str, code: int = 2) -> None:
    """Prints ``error: <message>`` on stderr and exits with ``code`` without interpreter shutdown.

    tf.data worker threads that were inside ``tf.numpy_function`` when an error surfaced can deadlock
    or abort Python's finalisation (seen: a hang for >600 s on CI, and SIGABRT), so the exit code
    would be lost. Call it only once everything worth keeping (checkpoints, outputs) is on disk.
    """
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
