"""The leak guard: a second filter inside distill, from the teacher's own representation.

Real filters leak (Deep Ignorance's blocklist: 98% recall), and the Safety Divergence Penalty can only act on the
forbidden records it is given: a forbidden record that curate let into gold is trained on with KD, i.e. the student
is taught to copy the teacher there, while the penalty pushes it away on the records curate did catch. Measured on
the arithmetic world (docs/experiments.md), that tug-of-war leaves a student that relearns faster than filter-only.

The guard closes that gap with what distill has and curate did not: the teacher. A logistic-regression probe on the
teacher's hidden states (mean over the record's prompt tokens by default, at one mapped layer) learns
"forbidden record vs gold record" from curate's own labels: the quarantined forbidden records against gold. Every
gold record is then scored *out of fold* (cross-fitted, ``folds`` folds), so a leaked record is never scored by a
probe that was fit with it labelled gold and could have memorised that label. Gold records the probe puts on the
forbidden side (p >= ``threshold``) leave the KD pool: a surgical student gets them as penalty records, a
filter-only student drops them. The probe's own out-of-fold recall on the labelled forbidden records and its flag
rate on gold are recorded beside the decision, so a guard that cannot separate the two sets is visible.

A guard only ever removes records from KD (it never moves forbidden records into gold), so it cannot make the
filter leakier than curate left it. scikit-learn's LogisticRegression and cross_val_predict do the fitting; only the
pooling of hidden states is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..models import decoder_layers, layer_output


@torch.no_grad()
def pooled_states(model, encoded: list[dict], layer: int, pad_id: int, batch_size: int = 32) -> np.ndarray:
    """Mean of layer ``layer``'s output over each encoded row's tokens: array (rows, hidden)."""
    store: dict[str, torch.Tensor] = {}
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _i, out: store.__setitem__("h", layer_output(out)))
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(encoded), batch_size):
            rows = [r["input_ids"] for r in encoded[start:start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            model(input_ids=ids, attention_mask=mask)
            h = store["h"].float()
            m = mask[..., None].float()
            out.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class GuardDecision:
    flagged: list[int]  # gold indices on the forbidden side
    scores: np.ndarray  # out-of-fold p(forbidden) per gold record
    record: dict = field(default_factory=dict)


def fit_guard(gold_x: np.ndarray, forb_x: np.ndarray, folds: int, seed: int, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold p(forbidden) for every gold row and every forbidden row (cross-fitted, stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_min = min(len(gold_x), len(forb_x))
    if n_min < folds:
        raise ValueError(f"distill.leak_guard: needs at least {folds} gold and {folds} forbidden records to "
                         f"cross-fit its probe (has {len(gold_x)} gold, {len(forb_x)} forbidden)")
    x = np.concatenate([gold_x, forb_x])
    y = np.concatenate([np.zeros(len(gold_x), dtype=int), np.ones(len(forb_x), dtype=int)])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
    p = cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                          method="predict_proba")[:, 1]
    return p[:len(gold_x)], p[len(gold_x):]


def run_guard(model, encoded_gold: list[dict], encoded_forb: list[dict], gold_recs: list[dict],
              forb_recs: list[dict], layer: int, threshold: float, folds: int, seed: int,
              pad_id: int) -> GuardDecision:
    """Score gold with the teacher-representation probe; returns the flagged gold indices and the record."""
    if not forb_recs:
        raise ValueError("distill.leak_guard: probe needs the forbidden records (curate's quarantine) to learn "
                         "what forbidden looks like; none were given")
    gold_x = pooled_states(model, encoded_gold, layer, pad_id)
    forb_x = pooled_states(model, encoded_forb, layer, pad_id)
    p_gold, p_forb = fit_guard(gold_x, forb_x, folds, seed)
    flagged = [i for i, p in enumerate(p_gold) if p >= threshold]
    record = {
        "method": "probe", "layer": layer, "folds": folds, "threshold": threshold,
        "n_gold": len(gold_recs), "n_forbidden": len(forb_recs), "flagged": len(flagged),
        "flagged_fraction": round(len(flagged) / max(1, len(gold_recs)), 6),
        # how well the probe tells the labelled sets apart, both out of fold
        "forbidden_recall_oof": round(float((p_forb >= threshold).mean()), 6),
        "flagged_by_domain": _count(gold_recs[i].get("domain") for i in flagged),
    }
    # ground truth where the records carry it: gold records whose domain is one the forbidden records have
    # (a simulated leak, or a user's labelled data)
    forb_domains = {r.get("domain") for r in forb_recs if r.get("domain") is not None}
    truly = [i for i, r in enumerate(gold_recs) if r.get("domain") in forb_domains]
    if forb_domains:
        hit = set(flagged)
        record["ground_truth"] = {
            "forbidden_domains": sorted(map(str, forb_domains)),
            "gold_in_forbidden_domains": len(truly),
            "caught": sum(i in hit for i in truly),
            "recall": round(sum(i in hit for i in truly) / len(truly), 6) if truly else None,
            "false_flags": sum(i not in set(truly) for i in flagged),
        }
    return GuardDecision(flagged, p_gold, record)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))
