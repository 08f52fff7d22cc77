"""The one rule for output folders: never delete or overwrite what the toolkit did not write.

Run folders, exports and conversions all check their output path here before anything is
read or built: a file, a path under a file or an unwritable folder is refused, and an
existing non-empty folder is accepted only when it is one of the toolkit's own (`ours`)
or the user asked to `overwrite` it.
"""

import os
from typing import Callable

from keras_bert_ft.errors import bad_argument


def check_output_folder(path, name: str, *, ours: Callable[[str], bool] = lambda p: False,
                        overwrite: bool = False, what: str = "") -> bool:
    """Refuses `path` as an output folder unless it is new, empty, ours, or to be
    overwritten; returns True when it holds someone else's files that `overwrite`
    replaces. `what` names what the folder may already be (e.g. "an earlier export")."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise bad_argument(name, path, "a folder path")
    path = os.fspath(path)
    if "://" in path:  # object stores: no folders to protect, no rename
        return False
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise bad_argument(name, path, "a folder path (it is a file)")
        if os.listdir(path) and not ours(path):
            if not overwrite:
                also = f", or {what}" if what else ""
                raise bad_argument(name, path, f"a new or empty folder{also} (it holds other "
                                   "files; pass overwrite / --overwrite to replace them)")
            return True
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise bad_argument(name, path, f"a folder path this user can write ({parent} is "
                           f"{'not writable' if os.path.isdir(parent) else 'a file'})")
    return False


def cache_dir() -> str:
    """Where the toolkit keeps what it can reuse across runs (KBFT_CACHE_DIR, else
    $XDG_CACHE_HOME/keras_bert_ft, else ~/.cache/keras_bert_ft). Everything in it may be
    deleted at any time; nothing there is ever the only copy of anything."""
    if os.environ.get("KBFT_CACHE_DIR"):
        return os.environ["KBFT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras_bert_ft")


def write_whole(path: str, data: bytes) -> None:
    """Writes `data` to `path` under a temporary name, then renames it into place: a reader
    sees the old file or the new one, never half of one (the cache is shared by
    concurrent runs). Creates the folder; an OSError leaves no temporary file behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
