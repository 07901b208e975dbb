"""Writing files and folders so that a reader never sees a half-written one (standard library only).

A file is written under a temporary name beside its target (``<name>.tmp``, same folder, hence the
same file system) and renamed over the target only when complete: ``os.replace`` is atomic, so the
target is either the old file or the whole new one, also after a kill. A write that fails removes
its temporary file and leaves the target as it was. ``durable=True`` also fsyncs the data before the
rename and the folder after it, so a power cut cannot leave a name pointing at data that never
reached the disk (checkpoints and their index need that; outputs that are simply rewritten on the
next run do not).

Folders (SavedModel exports, converted run folders) are built in a staging folder and moved into
place with :func:`replace_folder`.
"""
from __future__ import annotations

import errno
import os
import pathlib
from typing import BinaryIO, Callable


def fsync_path(path) -> None:
    """fsyncs a file or a folder (a folder: so that a rename in it is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems cannot fsync a folder (EINVAL); the data itself was synced.
        if not (os.path.isdir(path) and error.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def replace_synced(tmp, path) -> None:
    """Renames a fully written ``tmp`` over ``path`` durably: data fsynced first, the folder after."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(pathlib.Path(path).parent)


def atomic_write(path, write: Callable[[BinaryIO], None], durable: bool = False) -> str:
    """Writes ``path`` through ``write(binary_handle)``, atomically (see the module docstring).

    Args:
      path: the target file; its folder is created.
      write: fills the open binary handle (e.g. ``lambda handle: np.save(handle, array)``).
      durable: fsync the data before the rename and the folder after it.
    Returns:
      ``str(path)``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        if durable:
            replace_synced(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write or the rename failed
    return str(path)


def atomic_write_bytes(path, data: bytes, durable: bool = False) -> str:
    """:func:`atomic_write` of a bytes object."""
    return atomic_write(path, lambda handle: handle.write(data), durable=durable)


def replace_folder(new: pathlib.Path, output: pathlib.Path, aside: pathlib.Path) -> None:
    """Renames the complete folder ``new`` to ``output``; an existing ``output`` is first renamed to
    ``aside`` (on the same file system; the caller deletes it afterwards) and put back if the final
    rename fails, so ``output`` is always either the old folder or the whole new one."""
    moved = output.exists()
    if moved:
        os.replace(output, aside)
    try:
        os.replace(new, output)
    except OSError:
        if moved:
            os.replace(aside, output)
        raise
