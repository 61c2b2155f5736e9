"""Exact and near-duplicate detection: normalised-text hashes and MinHash with LSH banding.

MinHash (Broder 1997) estimates the Jaccard similarity of two documents' shingle sets from the fraction
of equal entries of their signatures; LSH banding (Leskovec, Rajaraman & Ullman, "Mining of Massive
Datasets", ch. 3) finds candidate pairs whose b-row bands collide. This is the scheme of ``datasketch``
(same universal hash over 32-bit shingle hashes, Mersenne prime 2**61-1); it is ~60 lines here so that
signatures are deterministic across worker processes, stored as compact uint32 arrays, and no new
dependency is needed.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> str:
    """Lower-case with whitespace runs collapsed: what 'the same text' means for exact dedup."""
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_key(text: str) -> bytes:
    """A 16-byte digest of the normalised text."""
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise(text).split(" ")
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _hash32(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=4).digest(), "little")


def minhash_params(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) coefficients of ``num_perm`` universal hashes ``(a*x + b) mod (2**61 - 1)``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, params: tuple[np.ndarray, np.ndarray], n: int = 3) -> np.ndarray:
    """The MinHash signature (uint32 array, one entry per permutation) of ``text``'s shingles."""
    a, b = params
    x = np.fromiter((_hash32(s) for s in shingles(text, n)), dtype=np.uint64)
    # a, x < 2**32 so a*x + b < 2**64: no overflow in uint64.
    hashed = ((np.outer(x, a) + b) % _MERSENNE) & _MAX32
    return hashed.min(axis=0).astype(np.uint32)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature entries (an unbiased estimate of the shingle sets' Jaccard)."""
    return float(np.mean(sig_a == sig_b))


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity of two sets (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class LSHIndex:
    """Signatures of the documents seen so far, banded for sub-linear near-duplicate queries.

    Memory: ``num_perm`` * 4 bytes per signature plus one int per band per document."""

    def __init__(self, num_perm: int, bands: int, threshold: float):
        if num_perm % bands:
            raise ValueError(f"minhash_perm ({num_perm}) must be a multiple of minhash_bands ({bands})")
        self.rows, self.bands, self.threshold = num_perm // bands, bands, threshold
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self._sigs = np.zeros((0, num_perm), dtype=np.uint32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        return [hash(sig[i * self.rows : (i + 1) * self.rows].tobytes()) for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> list[tuple[int, float]]:
        """Indexed documents (position, estimated Jaccard) at or above the threshold."""
        cands = {j for i, k in enumerate(self._band_keys(sig)) for j in self.buckets[i].get(k, ())}
        found = [(j, jaccard_estimate(sig, self._sigs[j])) for j in sorted(cands)]
        return [(j, s) for j, s in found if s >= self.threshold]

    def add(self, sig: np.ndarray) -> int:
        if self._n == len(self._sigs):  # amortised growth of the signature buffer
            grown = np.zeros((max(64, 2 * len(self._sigs)), self._sigs.shape[1]), dtype=np.uint32)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        self._sigs[self._n] = sig
        for i, k in enumerate(self._band_keys(sig)):
            self.buckets[i].setdefault(k, []).append(self._n)
        self._n += 1
        return self._n - 1
