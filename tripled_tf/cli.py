"""What the ``python -m tripled_tf.X`` entry points share (no TensorFlow import)."""
from __future__ import annotations

import os
import pathlib
import sys


def use_onednn_by_default() -> None:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 unless the environment already sets it; call it before TensorFlow
    is imported (TensorFlow reads it once, at import). Only entry points call it: importing the
    library changes no environment variable of the caller.

    TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI / BF16 / AMX;
    elsewhere (AVX2 machines, most AMD EPYC / Ryzen, laptops) it runs the slower Eigen kernels. With
    oneDNN the 640x192 batch-4 baseline step (configs/kitti_md2.cfg) went from 8.9 s to 6.9-7.2 s on
    a 2-core AVX2 EPYC (tools/bench_train.py runs; README "Performance"). As a default only:
    TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


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


def _flagfile_lines(path: str, including, stack: tuple) -> list:
    """The flag lines of a flagfile (blank and comment lines dropped), nested flagfiles inlined."""
    resolved = pathlib.Path(path).expanduser()
    if not resolved.is_absolute() and not resolved.is_file() and including is not None:
        for folder in (including.parent, *including.parent.parents):
            if (folder / resolved).is_file():
                resolved = folder / resolved
                break
    if not resolved.is_file() or resolved.resolve() in stack:
        return [f"--flagfile={path}"]  # absl reports a missing file (and warns on a cycle)
    lines = []
    for line in resolved.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        if line.startswith("--flagfile="):
            lines.extend(_flagfile_lines(line.partition("=")[2], resolved,
                                         stack + (resolved.resolve(),)))
        else:
            lines.append(line)
    return lines


def expand_flagfiles(argv) -> list:
    """``argv`` with every ``--flagfile=FILE`` replaced by FILE's flag lines, in place (as absl
    reads them: later flags win). A nested ``--flagfile=configs/kitti.cfg`` inside a flagfile is
    looked up from the current folder, as absl does, and else from the including file's folder and
    the folders above it, so a variant config works from any folder."""
    out = list(argv[:1])
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            out.extend(_flagfile_lines(arg.partition("=")[2], None, ()))
        else:
            out.append(arg)
    return out


def parse_flags(argv) -> list:
    """absl's flag parsing (usage message on a bad flag) after :func:`expand_flagfiles`; for
    ``app.run(main, flags_parser=parse_flags)``."""
    from absl import app

    return app.parse_flags_with_usage(expand_flagfiles(argv))


def _verbose_level(argv, default: int = 1) -> int:
    """``--verbose`` as ``argv`` sets it, flagfiles included, before the real flags exist (a
    FlagValues of its own holding only --verbose; anything it cannot read gives ``default``, and the
    real parse reports it)."""
    from absl import flags

    own = flags.FlagValues()
    flags.DEFINE_integer("verbose", default, "", flag_values=own)
    try:
        own(expand_flagfiles(argv), known_only=True)
    except (flags.Error, OSError):
        return default
    return own.verbose


def quiet_tensorflow(argv) -> None:
    """Hides TensorFlow's own log output unless ``--verbose=2``: call before TensorFlow is imported.

    Its C++ logging reads TF_CPP_MIN_LOG_LEVEL once (3: none, also no "failed call to cuInit" on a
    machine without a GPU, no grappler "remapper failed"); the notices it prints while it is imported
    (oneDNN, CUDA drivers) come before that level applies, so stderr is closed for the import only.
    An import that fails still raises, and its traceback prints once stderr is back.
    """
    if _verbose_level(argv) >= 2:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().setLevel("ERROR")
