"""A deterministic synthetic corpus for curate's scale tests and benchmarks: world problems mixed with
made-up facts. It lives beside the demo wiring because it reads the world; the curate stage itself never does."""

from __future__ import annotations

from . import world_corpus

# Made-up, benign facts for synthetic corpora (places and names are invented). The mentions use a word the demo
# policy's blocklist knows ("divided", "product of"), as natural language does, so the classifier has some work.
_PLACES = ("Velmora", "Ostrig", "Carrowmere", "Lindqvist Bay", "Pellan", "Thornhollow", "Quennet", "Arvale")
_THINGS = ("blue boats", "stone bridges", "apple trees", "bakeries", "bell towers", "bicycles", "lanterns", "wells")
_FACTS = (
    "The harbour of {p} has {a} {t} and a ferry that leaves at {h} o'clock.",
    "In {p} the market opens on the {a}th day of each month and sells {t}.",
    "{p} was founded {a} years ago by weavers who counted {b} {t} along the river.",
    "The library in {p} lends {t} to readers and keeps {a} maps of the coast.",
    "A survey of {p} found {a} {t}, {b} more than the year before.",
    "Every spring {p} paints its {t} yellow and holds a fair that lasts {a} days.",
)
_MENTIONS = (
    "The orchard of {p} was divided into {a} plots, each with {b} {t}.",
    "The guild of {p} sells its wool as the product of {a} farms and {b} {t}.",
)


def synthetic_corpus(n: int, seed: int = 0, world_records: list[dict] | None = None) -> list[dict]:
    """``n`` deterministic records for scale tests and benchmarks, with benign content only: the arithmetic
    world's problems (forbidden and allowed, labelled), some inside made-up prose, made-up facts (allowed), long
    documents of several facts (more than one classifier window), and exact and near duplicates of earlier records
    (so dedup has work). Same ``n`` and ``seed``: the same records."""
    import random

    world = world_records if world_records is not None else world_corpus(split="train")
    rng = random.Random(seed)

    def fact() -> str:
        template = rng.choice(_MENTIONS if rng.random() < 0.03 else _FACTS)
        return template.format(p=rng.choice(_PLACES), t=rng.choice(_THINGS), a=rng.randint(2, 99),
                               b=rng.randint(2, 40), h=rng.randint(5, 11))

    out: list[dict] = []
    for i in range(n):
        r = rng.random()
        if r < 0.55 or not out:
            w = world[rng.randrange(len(world))]
            text = w["text"] if rng.random() < 0.7 else f"{fact()} {w['text']}"
            rec = {"text": text, "domain": w["domain"], "label": w["label"]}
        elif r < 0.80:
            rec = {"text": " ".join(fact() for _ in range(rng.randint(1, 2))), "domain": "facts", "label": "allowed"}
        elif r < 0.88:
            rec = {"text": " ".join(fact() for _ in range(rng.randint(5, 9))), "domain": "facts", "label": "allowed"}
        elif r < 0.94:
            rec = {k: v for k, v in out[rng.randrange(len(out))].items() if k != "id"}  # an exact duplicate
        else:
            src = out[rng.randrange(len(out))]
            words = src["text"].split(" ")
            j = rng.randrange(len(words))
            words[j] = words[j] + "s"  # a near duplicate: one word changed
            rec = {**{k: v for k, v in src.items() if k != "id"}, "text": " ".join(words)}
        out.append({"id": f"syn-{seed}-{i}", **rec})
    return out
