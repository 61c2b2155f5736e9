"""Corpus readers that stream records one at a time (JSONL, parquet, plain text, saved HF datasets).

Every reader yields ``(where, record)`` where ``where`` names the file and line/row, and ``record`` is a
dict, or a ``ReadError`` for a unit that could not be read: curate quarantines those (fail closed). Bytes that
are not UTF-8 are never decoded with replacement characters: the unit is a ``ReadError`` naming its line, whose
``raw`` shows the bad bytes as ``\\xNN`` escapes, and the other units still read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..io import JsonlError, iter_jsonl


class ReadError(ValueError):
    """A unit of the corpus that could not be read; ``raw`` holds what was there (possibly truncated)."""

    def __init__(self, where: str, msg: str, raw: str = ""):
        self.where, self.msg, self.raw = where, msg, raw[:2000]
        super().__init__(f"{where}: {msg}")


def detect_format(path: Path) -> str:
    """jsonl | parquet | text | hf (a directory written by ``datasets.save_to_disk``)."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
                or (path / "state.json").exists():
            return "hf"
        raise ValueError(f"{path}: a directory that is not a saved HF dataset (no dataset_info.json)")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if suffixes.endswith(".parquet"):
        return "parquet"
    return "text"


def iter_records(path: str | Path, text_field: str = "text", text_unit: str = "line",
                 fmt: str | None = None, batch_rows: int = 1024) -> Iterator[tuple[str, dict | ReadError]]:
    """Stream the records of ``path`` in any supported format (memory: one parquet row group at most)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        yield from _iter_jsonl(path)
    elif fmt == "parquet":
        yield from _iter_parquet(path, batch_rows)
    elif fmt == "text":
        yield from _iter_text(path, text_field, text_unit)
    elif fmt == "hf":
        yield from _iter_hf(path)
    else:
        raise ValueError(f"unknown corpus format {fmt!r}")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict | ReadError]]:
    for line_no, rec in iter_jsonl(path, strict=False):
        where = f"{path}:{line_no}"
        if isinstance(rec, JsonlError):
            yield where, ReadError(where, rec.msg, rec.raw)
        else:
            yield where, rec


def _iter_parquet(path: Path, batch_rows: int) -> Iterator[tuple[str, dict | ReadError]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path}:row {row}", rec


def _iter_text(path: Path, text_field: str, unit: str) -> Iterator[tuple[str, dict | ReadError]]:
    def read_error(line_no: int, raw: bytes) -> ReadError:
        return ReadError(f"{path}:{line_no}", "invalid UTF-8 (not decoded)",
                         raw[:2000].decode("utf-8", "backslashreplace"))

    if unit == "file":
        raw = path.read_bytes()
        try:
            yield f"{path}", {text_field: raw.decode("utf-8")}
        except UnicodeDecodeError:
            yield f"{path}", read_error(1, raw)
        return
    para: list[str] = []
    start = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield f"{path}:{line_no}", read_error(line_no, raw)
                continue
            if unit == "line":
                if line.strip():
                    yield f"{path}:{line_no}", {text_field: line}
            elif line.strip():
                start = start or line_no
                para.append(line)
            elif para:
                yield f"{path}:{start}", {text_field: "\n".join(para)}
                para, start = [], 0
    if para:
        yield f"{path}:{start}", {text_field: "\n".join(para)}


def _iter_hf(path: Path) -> Iterator[tuple[str, dict | ReadError]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    for split, part in parts:
        for i, rec in enumerate(part):  # Arrow-backed: rows are memory-mapped, not loaded at once
            yield f"{path}[{split}]:row {i + 1}" if split else f"{path}:row {i + 1}", dict(rec)
