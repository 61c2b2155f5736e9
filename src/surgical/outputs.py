"""Directories surgical makes, and the rule that it never deletes or overwrites one it did not make.

Every directory a stage creates to replace as a whole (a student, a quantized model, an unlearned model, a
checkpoints folder) carries a mark file, ``.surgical-made``. Replacing or removing a directory that exists
without the mark is refused with an OutputError naming it: it may be the user's. Replacement is atomic: the new
directory is written beside the old one (``.NAME.tmp``), then swapped in with renames, so a kill at any moment
leaves either the old directory or the new one, never a mix. (The hidden ``.NAME.tmp`` / ``.NAME.old`` names are
surgical's own by construction and may always be cleared.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import __version__

MARK = ".surgical-made"


class OutputError(ValueError):
    """An output path surgical must not write: a user's directory, a file where a directory goes."""


def mark_made(directory: str | Path, kind: str) -> Path:
    """Mark ``directory`` (created by surgical) as surgical's own."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / MARK).write_text(json.dumps({"made_by": "surgical", "kind": kind, "version": __version__}) + "\n")
    return d


def is_made(directory: str | Path) -> bool:
    return (Path(directory) / MARK).is_file()


def check_replaceable(dest: str | Path) -> None:
    """Raise OutputError unless ``dest`` is absent or a directory surgical made."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest}: exists and is a file, not a directory surgical made; refusing to replace it")
    if dest.is_dir() and not is_made(dest):
        raise OutputError(f"{dest}: exists and was not made by surgical (no {MARK} mark); refusing to overwrite "
                          "it. Move it away or choose another output directory.")


def fresh_tmp(dest: str | Path) -> Path:
    """The hidden sibling a new version of ``dest`` is written into (cleared first)."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def replace_dir(tmp: str | Path, dest: str | Path, kind: str) -> Path:
    """Swap the finished ``tmp`` in as ``dest`` (marked ``kind``); the old ``dest`` must be surgical's own."""
    tmp, dest = Path(tmp), Path(dest)
    check_replaceable(dest)
    mark_made(tmp, kind)
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def remove_made(directory: str | Path) -> None:
    """Delete ``directory`` if surgical made it; refuse (OutputError) if it is someone else's."""
    d = Path(directory)
    if not d.exists():
        return
    check_replaceable(d)
    shutil.rmtree(d)


def ensure_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (a run or stage output directory); a clear OutputError if it is a file or not writable."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the output path is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".surgical-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    return out
