"""File plumbing shared by every stage: atomic writes, JSONL with line numbers, hashing, provenance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import __version__


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _json_default(o: Any):
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records one JSON object per line, atomically; returns the number written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, default=_json_default, ensure_ascii=False) + "\n")
            n += 1
    return n


class JsonlError(ValueError):
    """A JSONL line that does not parse; carries the file and 1-based line number."""

    def __init__(self, path: str | Path, line_no: int, msg: str, raw: str = ""):
        self.path, self.line_no, self.msg, self.raw = str(path), line_no, msg, raw
        super().__init__(f"{path}:{line_no}: {msg}")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(obj: Any) -> bool:
    """Whether a parsed JSON value holds a string that is not valid Unicode (a lone surrogate escape)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def iter_jsonl(path: str | Path, strict: bool = True) -> Iterator[tuple[int, dict | JsonlError]]:
    """Stream ``(line_no, record)`` from a JSONL file. With ``strict=False`` a bad line yields a
    ``JsonlError`` in place of the record instead of raising, so callers can quarantine it.

    A line is bad when it is not a JSON object, when its bytes are not valid UTF-8 (never decoded with
    replacement characters: the error's ``raw`` shows the bad bytes as ``\\xNN``), or when it holds a lone
    surrogate escape (``"\\ud800"``, not valid Unicode). The other lines of the file still read."""
    # surrogateescape keeps the line splitting of text mode and turns each invalid byte into a lone surrogate,
    # which valid UTF-8 never decodes to: a line that does not encode back strictly had invalid bytes.
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            msg = None
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError as exc:
                at = len(raw[: exc.start].encode("utf-8", "surrogateescape"))
                raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                msg = f"invalid UTF-8 at byte {at} of the line (not decoded)"
            if msg is None:
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict):
                        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
                    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(rec):
                        msg = "invalid Unicode: a lone surrogate escape (not encodable as UTF-8)"
                except ValueError as exc:
                    msg = f"invalid JSON: {exc}"
            if msg is not None:
                err = JsonlError(path, line_no, msg, raw.rstrip("\r\n"))
                if strict:
                    raise err from None
                yield line_no, err
                continue
            yield line_no, rec


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file; raises JsonlError naming the first bad line."""
    return [r for _, r in iter_jsonl(path, strict=True)]  # type: ignore[misc]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HASH_MEMO: dict[tuple, str] = {}


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, memoised within the process by (resolved path, size, mtime, ctime, inode):
    the runner hashes every input and output of every stage for its cache keys, and re-reading a large model's
    weights for each key would dominate a run. A file rewritten in place changes its mtime (and usually its
    size), which invalidates the memo."""
    p = Path(path)
    st = p.stat()
    # a file modified in the last 2 s is never memoised: file-system timestamps tick coarsely (milliseconds), so
    # two writes of the same size inside one tick would look alike
    fresh = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < 2_000_000_000
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if not fresh and key in _HASH_MEMO:
        return _HASH_MEMO[key]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    if not fresh:
        _HASH_MEMO[key] = h.hexdigest()
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hex SHA-256 of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".tmp"):
            continue
        h.update(rel.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def weights_hashes(d: str | Path) -> dict[str, str]:
    """sha256 of each safetensors file of a model directory, by file name."""
    return {f.name: sha256_file(f) for f in sorted(Path(d).glob("*.safetensors"))}


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode())


def provenance(config: Any = None, inputs: dict[str, str | Path] | None = None, **extra: Any) -> dict:
    """The provenance block every artifact carries: config, input hashes, versions and time."""
    import torch
    import transformers

    block = {
        "surgical_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "created_unix_s": round(time.time(), 3),
        "config": config.model_dump() if hasattr(config, "model_dump") else config,
        "config_hash": sha256_json(config.model_dump() if hasattr(config, "model_dump") else config),
        "inputs": {k: {"path": str(v), "sha256": sha256_path(v)} for k, v in (inputs or {}).items()
                   if v is not None and Path(v).exists()},
    }
    block.update(extra)
    return block


def surgical_home() -> Path:
    """Root of every cache: ``$SURGICAL_HOME`` or ``~/.cache/surgical``."""
    return Path(os.environ.get("SURGICAL_HOME", Path.home() / ".cache" / "surgical")).expanduser()


# ---------------------------------------------------------------- safetensors metadata

PACKED_METADATA = "surgical_metadata"


def one_metadata_key(metadata: dict[str, str]) -> dict[str, str]:
    """``metadata`` packed into a single safetensors metadata entry (sorted JSON). safetensors writes its metadata
    map in a per-process random order (a Rust HashMap), so a file with several entries is not byte-reproducible
    from one run to the next; with one entry it is."""
    return {PACKED_METADATA: json.dumps(metadata, sort_keys=True)} if len(metadata) > 1 else metadata


def from_one_metadata_key(metadata: dict[str, str]) -> dict[str, str]:
    """The inverse of ``one_metadata_key`` (files written before it are read as they are)."""
    return json.loads(metadata[PACKED_METADATA]) if PACKED_METADATA in metadata else metadata
