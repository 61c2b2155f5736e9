"""safetensors files surgical writes are byte-reproducible across processes: safetensors writes its metadata map in
a per-process random order, so several metadata entries are packed into one."""

import subprocess
import sys

SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from surgical.io import one_metadata_key
meta = {"kind": "surgical.map", "exact.kind": "0=neuron 1=head 2=layer", "third": "x"}
save_file({"a": torch.arange(4.0)}, sys.argv[1], metadata=one_metadata_key(meta))
"""


def test_packed_metadata_gives_identical_bytes_in_fresh_processes(tmp_path):
    outs = []
    for i in range(3):
        f = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SCRIPT, str(f)], check=True)
        outs.append(f.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_packed_metadata_round_trips():
    from surgical.io import from_one_metadata_key, one_metadata_key

    meta = {"b": "2", "a": "1"}
    assert from_one_metadata_key(one_metadata_key(meta)) == meta
    assert one_metadata_key({"format": "pt"}) == {"format": "pt"}  # one entry stays as it is
    assert from_one_metadata_key({"format": "pt"}) == {"format": "pt"}


def test_file_hashes_are_memoised_and_a_rewrite_invalidates_them(tmp_path, monkeypatch):
    import hashlib
    import time

    from surgical import io

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert io.sha256_file(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    now = time.time_ns
    monkeypatch.setattr(io.time, "time_ns", lambda: now() + 10_000_000_000)  # the file is no longer fresh
    first = io.sha256_file(f)
    reads = []
    real = hashlib.sha256
    monkeypatch.setattr(io.hashlib, "sha256", lambda *a: reads.append(1) or real(*a))
    assert io.sha256_file(f) == first and reads == []  # memoised: not read again
    f.write_bytes(b"b" * 1000)  # same size, same inode, new content: its ctime moves
    assert io.sha256_file(f) == real(b"b" * 1000).hexdigest() and reads == [1]
    monkeypatch.setattr(io.time, "time_ns", now)
    f.write_bytes(b"c" * 1000)  # fresh again: never taken from the memo
    assert io.sha256_file(f) == real(b"c" * 1000).hexdigest()
