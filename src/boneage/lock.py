"""One process at a time on a file: an advisory lock (flock) beside it, which the kernel drops when the holder ends,
however it ends, so a crashed run never leaves a stale lock to clean up by hand."""

from __future__ import annotations

import contextlib
from pathlib import Path

from boneage.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not kept apart
    fcntl = None


@contextlib.contextmanager
def held(lock_file: Path, busy: str):
    """Hold `lock_file` for the block, or raise UserError(busy) at once when another process holds it.

    On a file system without locks (some network mounts) the block runs unguarded, as it would without this."""
    try:
        handle = open(lock_file, "a")
    except OSError as exc:
        raise UserError(f"{lock_file.parent}: cannot be written ({exc.strerror or exc})") from None
    with handle:
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        except OSError:
            pass
        yield
