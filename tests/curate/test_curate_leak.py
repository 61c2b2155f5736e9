"""The simulated leaky filter (curate.simulate_leak_rate): a known fraction of the labelled-forbidden quarantined
records reaches gold, seeded, listed, and never a record without a ground-truth label."""

import pytest

from surgical.curate.config import CurateConfig
from surgical.curate.leak import simulate_leak
from surgical.io import read_json, read_jsonl, write_json, write_jsonl


def _curated(out, n_forbidden=200, n_unlabelled=50):
    write_jsonl(out / "gold.jsonl", [{"text": f"{i}+1", "label": "allowed", "domain": "add"} for i in range(30)])
    q = [{"text": f"{i}*3", "label": "forbidden", "domain": "mul" if i % 2 else "div",
          "curate": {"decision": "quarantine", "reason": "blocklist"}} for i in range(n_forbidden)]
    q += [{"text": f"u{i}", "curate": {"decision": "quarantine", "reason": "unscorable"}} for i in range(n_unlabelled)]
    write_jsonl(out / "quarantine.jsonl", q)
    write_json(out / "curate.json", {"counts": {"read": 280}})


@pytest.mark.parametrize("rate", [0.0, 0.05, 1.0])
def test_a_leak_moves_that_fraction_of_forbidden_records_to_gold(tmp_path, rate):
    _curated(tmp_path)
    block = simulate_leak(tmp_path, rate, seed=3)
    gold, quar = read_jsonl(tmp_path / "gold.jsonl"), read_jsonl(tmp_path / "quarantine.jsonl")
    n = round(rate * 200)
    assert block["moved_to_gold"] == n == sum(r.get("label") == "forbidden" for r in gold)
    assert len(gold) == 30 + n and len(quar) == 250 - n
    assert all(r["curate"]["simulated_leak"] and r["curate"]["decision"] == "gold" for r in gold[30:])
    assert sum("label" not in r for r in quar) == 50  # a record without a ground-truth label never leaks
    assert block["effective_recall"] == pytest.approx(1 - n / 200)
    assert read_json(tmp_path / "curate.json")["simulated_leak"] == block
    assert len(read_json(tmp_path / "leak.json")["records"]) == n
    assert "Simulated leak" in (tmp_path / "curate.md").read_text()


def test_the_leak_is_seeded(tmp_path):
    picks = []
    for seed in (0, 0, 1):
        d = tmp_path / f"s{len(picks)}"
        d.mkdir()
        _curated(d)
        simulate_leak(d, 0.1, seed=seed)
        picks.append([r["text"] for r in read_jsonl(d / "gold.jsonl")[30:]])
    assert picks[0] == picks[1] != picks[2] and len(picks[0]) == 20


def test_curate_run_applies_the_configured_leak(tmp_path, monkeypatch):
    import surgical.curate.run as crun

    def fake_curate(stream, out_dir, *a, **k):
        _curated(out_dir)
        return crun.CurateResult(out_dir, {"counts": {}}, {})

    monkeypatch.setattr(crun, "curate", fake_curate)
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, [{"text": "1+1"}])
    res = crun.run(CurateConfig(simulate_leak_rate=0.02), corpus, tmp_path / "out")
    assert res.report["simulated_leak"]["moved_to_gold"] == 4
    res = crun.run(CurateConfig(), corpus, tmp_path / "out0")
    assert "simulated_leak" not in res.report and not (tmp_path / "out0" / "leak.json").exists()
    with pytest.raises(ValueError):
        CurateConfig(simulate_leak_rate=1.5)
