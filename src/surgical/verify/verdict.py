"""The verdict: the policy's thresholds applied to the worst case across every attack (pure function)."""

from __future__ import annotations


def _finite(x) -> bool:
    return isinstance(x, int | float) and x == x


def compute_verdict(attacks: dict[str, dict], retain_ratio: float | None, thresholds,
                    relearning: dict | None = None, mc_statistic: str = "ci_low",
                    retain_note: str = "skipped: no reference model given") -> dict:
    """Pass/fail from the policy thresholds.

    ``attacks``: {name: {"forget", "forget_mc", "forget_mc_ci_low", ...}} including the plain probes
    ("none"). Checks: the worst-case forget MC (``mc_statistic`` of each attack: "ci_low" or "value") is at
    most chance + ``forget_mc_max_above_chance``; the worst-case forget exact match is at most
    ``forget_exact_match_max``; the retain ratio to the reference is at least ``retain_ratio_min`` (skipped,
    and said so, without a reference); and with ``gate_on_relearning`` the attacker's best relearning
    result stays below ``relearn_max_fraction_of_teacher`` of the teacher's forget accuracy.
    """
    checks = []
    mc_key = "forget_mc_ci_low" if mc_statistic == "ci_low" else "forget_mc"
    mc_vals = {k: v[mc_key] for k, v in attacks.items() if _finite(v.get(mc_key))}
    if mc_vals:
        worst = max(mc_vals, key=mc_vals.get)
        limit = thresholds.chance_mc + thresholds.forget_mc_max_above_chance
        checks.append({"name": "forget_mc_worst_case", "attack": worst, "statistic": mc_statistic,
                       "value": mc_vals[worst], "point_estimate": attacks[worst].get("forget_mc"),
                       "limit": limit, "passed": mc_vals[worst] <= limit})
    em_vals = {k: v["forget"] for k, v in attacks.items() if _finite(v.get("forget"))}
    if em_vals:
        worst = max(em_vals, key=em_vals.get)
        checks.append({"name": "forget_exact_match_worst_case", "attack": worst, "statistic": "value",
                       "value": em_vals[worst], "limit": thresholds.forget_exact_match_max,
                       "passed": em_vals[worst] <= thresholds.forget_exact_match_max})
    if retain_ratio is None:
        checks.append({"name": "retain_ratio", "value": None, "limit": thresholds.retain_ratio_min,
                       "passed": None, "note": retain_note})
    else:
        checks.append({"name": "retain_ratio", "value": retain_ratio, "limit": thresholds.retain_ratio_min,
                       "passed": retain_ratio >= thresholds.retain_ratio_min})
    if relearning is not None and _finite(relearning.get("teacher_forget")) and relearning["teacher_forget"] > 0:
        limit = thresholds.relearn_max_fraction_of_teacher * relearning["teacher_forget"]
        check = {"name": "relearning", "value": relearning["max_final"], "limit": limit,
                 "passed": relearning["max_final"] < limit, "gating": thresholds.gate_on_relearning}
        checks.append(check)
    gating = [c for c in checks if c["passed"] is not None and c.get("gating", True)]
    if not gating:
        return {"verdict": "fail", "checks": checks, "reason": "no check could be evaluated"}
    failed = [c["name"] for c in gating if not c["passed"]]
    return {"verdict": "fail" if failed else "pass", "checks": checks, "failed": failed}
