"""Downloading published files into the cache: the one home for it, standard library only.

Used by the model presets (``tripled_tf.load("monodepth2:mono_640x192")``) and the encoder presets
(``--encoder_weights=swav|supervised|moco``), both in :mod:`tripled_tf.presets`.
:func:`fetch(url, target) <fetch>` makes ``target`` a complete, checked copy of ``url``:

- resumable: the bytes go to ``<target>.part``; a call that finds a .part asks only for the rest,
  ``Range: bytes=<size of the .part>-``. The server answers 206 (the rest: appended), 200 (it ignores
  ranges: the .part is rewritten from the start) or 416 (nothing left: the .part is whole, or longer
  than the file, which then starts over). Within one call an interrupted transfer is resumed up to
  ``retries`` times while it makes progress;
- checked: against the published MD5 or SHA-256 (or their first hex digits, as MoCo's README and
  torchvision's file names give them); where nothing is published, the SHA-256 of the first download
  is recorded beside it in ``<target>.sha256`` and every later download and use is checked against it;
- atomic: the .part is renamed to ``target`` only when complete and checked, so a half-downloaded
  file is never taken for a whole one (a .part that fails its check is deleted);
- exclusive: processes on one machine sharing the cache (training workers) take turns through a lock
  file, ``<target>.lock``; the second finds the first one's file;
- bounded: every connect and every read times out after ``TIMEOUT_S`` seconds;
- switchable: ``TRIPLED_TF_OFFLINE=1`` (anything but empty or 0) forbids every request.

Every failure is a :class:`DownloadError` of one line naming the URL and where to place the file by
hand (a machine without network: download it elsewhere and copy it there).

Cache: ``$TRIPLED_TF_CACHE``, default ``~/.cache/tripled_tf``.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no lock (one process per cache there)
    fcntl = None

OFFLINE_ENV = "TRIPLED_TF_OFFLINE"
CACHE_ENV = "TRIPLED_TF_CACHE"
TIMEOUT_S = 60.0  # per connect and per read, seconds
_BLOCK = 1 << 20  # bytes read and written at a time
_USER_AGENT = "tripled_tf"


class DownloadError(ValueError):
    """A file that cannot be downloaded or does not match its checksum (one line: what to do)."""


class _Interrupted(Exception):
    """A transfer that stopped before the end; ``written``: bytes it added to the .part."""

    def __init__(self, reason: str, written: int):
        super().__init__(reason)
        self.written = written


def file_name(url: str) -> str:
    """The file name an address ends with, percent-decoded ("mono%2Bstereo_640x192.zip" ->
    "mono+stereo_640x192.zip"): the name a download is cached under."""
    return urllib.parse.unquote(url.rsplit("/", 1)[-1])


def offline() -> bool:
    """Whether downloads are forbidden (``TRIPLED_TF_OFFLINE`` set to anything but empty or 0)."""
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def cache_dir() -> pathlib.Path:
    """``$TRIPLED_TF_CACHE``, default ``~/.cache/tripled_tf``."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "tripled_tf")


def digest(path, algorithm: str) -> str:
    """Hex digest (``hashlib`` algorithm name, e.g. "md5", "sha256") of a file's bytes."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()


@contextlib.contextmanager
def file_lock(path):
    """Holds an exclusive lock on ``<path>.lock`` (POSIX ``flock``; released when the process dies,
    so a killed download never blocks the next one). The lock file itself stays: removing it would
    let a third process lock a new file while the second still holds the old one."""
    lock = pathlib.Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _mismatch(path: pathlib.Path, target: pathlib.Path, md5: str, sha256: str) -> Optional[str]:
    """None when ``path`` has the expected checksum, else the reason (part of a one-line message).

    A published checksum may be a prefix (its first hex digits). Without one, the SHA-256 recorded
    in ``<target>.sha256`` at the first download is expected, and recorded now if there is none."""
    published = [(name, value.lower()) for name, value in (("md5", md5), ("sha256", sha256)) if value]
    for algorithm, expected in published:
        actual = digest(path, algorithm)
        if not actual.startswith(expected):
            what = "the published" if len(expected) == len(actual) else "the published prefix"
            return f"its {algorithm.upper()} {actual} does not match {what} {expected}"
    if published:
        return None
    record = target.with_name(target.name + ".sha256")
    actual = digest(path, "sha256")
    if not record.is_file():
        record.write_text(actual + "\n")
        return None
    if record.read_text().strip() != actual:
        return (f"its SHA-256 {actual} differs from the one recorded at the first download "
                f"({record}; delete it to accept a changed file)")
    return None


def _content_range(value: Optional[str]):
    """(first byte or None, total or None) of a Content-Range header ("bytes 10-99/100",
    "bytes */100")."""
    found = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not found:
        return None, None
    first, total = found.groups()
    return (int(first) if first else None), (int(total) if total.isdigit() else None)


def _transfer(url: str, part: pathlib.Path, timeout: float, show_progress: bool) -> None:
    """One request that completes ``part``: the rest from its current size, or all of it.

    Raises _Interrupted when the connection ends or stalls before the last byte (the bytes so far
    stay in the .part); ``urllib.error.HTTPError`` (404, ...) and ``URLError`` / ``OSError`` (no
    network, refused, a timeout at connect) when nothing could be transferred."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not have:
            raise
        _, total = _content_range(error.headers.get("Content-Range"))
        error.close()
        if total == have:
            return  # the .part is whole (stopped between its last byte and the rename)
        part.unlink()  # longer than the file, or no size given: start over cleanly
        return _transfer(url, part, timeout, show_progress)
    with response:
        first, _ = _content_range(response.headers.get("Content-Range"))
        if have and response.status == 206 and first == have:
            mode = "ab"  # the rest, appended
        elif response.status == 200 or (response.status == 206 and not first):
            mode, have = "wb", 0  # the whole file (a server that ignores Range): start over
        else:  # never splice bytes from another offset onto the .part
            raise urllib.error.URLError(f"HTTP {response.status} with Content-Range starting at "
                                        f"{first} to a request for bytes {have}-")
        length = response.headers.get("Content-Length", "")
        expected = int(length) if length.isdigit() else None
        total = f" / {(have + expected) / 1e6:.1f}" if expected is not None else ""
        written = 0
        with open(part, mode) as out:
            while True:
                try:
                    # read1: what has arrived (up to a block), so a stall loses no received byte.
                    block = response.read1(_BLOCK)
                except (OSError, http.client.HTTPException) as error:  # timeout, reset
                    raise _Interrupted(str(error) or type(error).__name__, written) from None
                if not block:
                    break
                out.write(block)
                written += len(block)
                if show_progress:
                    sys.stderr.write(f"\r{part.name[:-5]}: {(have + written) / 1e6:.1f}{total} MB")
        if show_progress:
            sys.stderr.write("\n")
        if expected is not None and written < expected:
            # http.client returns a short body without an error when the connection closes early.
            raise _Interrupted(f"connection closed after {written} of {expected} bytes", written)


def fetch(url: str, target, *, md5: str = "", sha256: str = "", retries: int = 2,
          timeout: Optional[float] = None, progress: Optional[bool] = None) -> pathlib.Path:
    """Makes ``target`` a complete, checked copy of ``url`` (see the module docstring); returns it.

    Args:
      url: the file's address (http or https).
      target: where the file goes; an existing one is checked and kept (no request).
      md5, sha256: the published checksum, whole or its first hex digits; "" = none published (the
        SHA-256 of the first download is recorded and checked afterwards).
      retries: resumptions within this call of a transfer that stopped after making progress.
      timeout: seconds allowed for the connect and for each read; default ``TIMEOUT_S``.
      progress: a progress line on stderr; default: only when stderr is a terminal.

    Raises:
      DownloadError: downloads off (``TRIPLED_TF_OFFLINE``), an HTTP or network error, a transfer
        interrupted for good (its .part stays for the next call), or a checksum that does not match
        (the .part is deleted; an existing ``target`` is kept). One line, naming the URL and where
        to place the file by hand.
    """
    target = pathlib.Path(target)
    manual = f"download {url} and place it at {target}"
    if target.is_file():
        _check_existing(url, target, md5, sha256)
        return target
    if offline():
        raise DownloadError(f"not in the cache and downloads are off ({OFFLINE_ENV} is set); {manual}")
    show_progress = sys.stderr.isatty() if progress is None else progress
    timeout = TIMEOUT_S if timeout is None else timeout
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with file_lock(target):
        if target.is_file():  # another process finished it while this one waited for the lock
            _check_existing(url, target, md5, sha256)
            return target
        attempt = 0
        while True:
            try:
                _transfer(url, part, timeout, show_progress)
                break
            except _Interrupted as error:
                if error.written and attempt < retries:
                    attempt += 1
                    continue
                have = part.stat().st_size if part.is_file() else 0
                raise DownloadError(f"download of {url} interrupted ({error}); {have} bytes kept in "
                                    f"{part}: run again to resume, or {manual}") from None
            except urllib.error.HTTPError as error:
                raise DownloadError(f"download of {url} failed (HTTP {error.code} {error.reason}); "
                                    f"{manual}") from None
            except (urllib.error.URLError, OSError) as error:  # no network, refused, DNS, timeout
                reason = str(getattr(error, "reason", None) or error).splitlines() or ["?"]
                raise DownloadError(f"download of {url} failed ({reason[0]}); on a machine without "
                                    f"network, {manual}") from None
        reason = _mismatch(part, target, md5, sha256)
        if reason:
            part.unlink()
            raise DownloadError(f"download of {url}: {reason}, a corrupt or changed file (deleted); "
                                f"run again to retry, or {manual}")
        os.replace(part, target)
    return target


def _check_existing(url: str, target: pathlib.Path, md5: str, sha256: str) -> None:
    """A file already at ``target`` (downloaded earlier, or placed by hand) must pass the check too."""
    reason = _mismatch(target, target, md5, sha256)
    if reason:
        raise DownloadError(f"{target}: {reason}, a corrupt file or not the one at {url}; delete it "
                            f"to download again")
