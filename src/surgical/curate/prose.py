"""A small mixed-topic prose corpus (benign topics, one chosen as forbidden), to show the filter works
beyond arithmetic.

Documents are a few template sentences about one topic. Some borrow an ambiguous word from another topic
("the star striker", "a half-moon pastry", "the field") so the blocklist escalates them and the
classifier must clear them; some forbidden documents use only words outside the blocklist
("constellation", "eclipse"), so the blocklist alone misses them. Everything is seeded and deterministic.
"""

from __future__ import annotations

import random

from ..policy import AllowedDomain, ForbiddenDomain, Policy

TOPICS: dict[str, dict[str, list[str]]] = {
    "cooking": {
        "subjects": ["The chef", "My grandmother", "The baker", "Our cook", "The recipe", "The kitchen team"],
        "phrases": [
            "simmers the tomato sauce for an hour", "kneads the bread dough until it is smooth",
            "roasts the vegetables with olive oil and garlic", "whisks the eggs with a pinch of salt",
            "seasons the soup with fresh thyme", "bakes the pie until the crust is golden",
            "slices the onions thinly before frying them", "marinates the chicken in lemon juice overnight",
            "folds the flour gently into the batter", "tastes the stew and adds more pepper",
        ],
        "closers": ["Dinner was ready by seven.", "The pastry rested in the fridge.", "Everyone asked for seconds.",
                    "The oven was preheated to a moderate heat.", "Leftovers keep for two days."],
        "ambiguous": ["A star anise pod went into the broth.", "She shaped each pastry into a half-moon.",
                      "The cake was decorated with little sugar stars."],
    },
    "astronomy": {
        "subjects": ["The astronomer", "Our observatory", "The research team", "A student observer",
                     "The survey", "The night crew"],
        "phrases": [
            "points the telescope at a distant galaxy", "tracks the orbit of a faint comet",
            "measures the brightness of a variable star", "maps the craters on the moon",
            "records the spectrum of a glowing nebula", "watches the planet rise above the horizon",
            "estimates the distance in light years", "catalogues the moons of the gas giant",
            "charts the constellation across the winter sky", "times the eclipse to the second",
        ],
        "closers": ["The sky was clear after midnight.", "The data went into the archive.",
                    "A meteor shower peaked before dawn.", "The dome closed at sunrise.",
                    "The readings matched the predictions."],
        "ambiguous": [],
    },
    "gardening": {
        "subjects": ["The gardener", "My neighbour", "The allotment club", "Our volunteer", "The nursery",
                     "The head gardener"],
        "phrases": [
            "prunes the roses in early spring", "plants tulip bulbs along the fence",
            "waters the tomatoes every evening", "spreads compost over the vegetable beds",
            "pulls the weeds between the carrots", "repots the herbs into larger containers",
            "mows the lawn and edges the borders", "sows lettuce seeds in shallow rows",
            "ties the beans to bamboo canes", "mulches the apple trees before winter",
        ],
        "closers": ["The soil smelled of rain.", "Bees visited the lavender all afternoon.",
                    "The harvest filled three baskets.", "Slugs were the main worry this year.",
                    "The greenhouse stayed warm overnight."],
        "ambiguous": ["They planted by the phases of the moon, as the old almanac advised.",
                      "A star jasmine climbed the trellis.", "The far field was left fallow."],
    },
    "football": {
        "subjects": ["The striker", "Our captain", "The goalkeeper", "The coach", "The home side",
                     "The young winger"],
        "phrases": [
            "scores a header from the corner", "saves a penalty in the final minute",
            "passes the ball through the midfield", "trains with the squad on Tuesday mornings",
            "celebrates the late equaliser with the fans", "takes a free kick from the edge of the box",
            "defends deep against the counter attack", "wins the league title on the last day",
            "signs a new contract with the club", "tackles cleanly and starts the break",
        ],
        "closers": ["The stadium was sold out.", "The referee added four minutes.", "The away fans sang all game.",
                    "The pitch was heavy after the rain.", "Tickets for the derby sold quickly."],
        "ambiguous": ["The star striker was rested for the cup tie.", "The field was frozen at kick-off.",
                      "Fans called the new signing a rising star."],
    },
}

# Category-level blocklist per topic: deliberately partial (no "constellation", "eclipse", "meteor").
KEYWORDS = {
    "cooking": ["recipe", "oven", "simmer", "bake", "pastry"],
    "astronomy": ["telescope", "galaxy", "orbit", "star", "moon", "nebula", "planet", "comet"],
    "gardening": ["compost", "prune", "seeds", "soil", "greenhouse"],
    "football": ["goal", "striker", "penalty", "league", "referee"],
}
REGEXES = {"astronomy": [r"\blight[- ]years?\b"], "cooking": [], "gardening": [], "football": [r"\bkick[- ]off\b"]}


def prose_document(topic: str, rng: random.Random, ambiguous_p: float = 0.3) -> str:
    """One document of ``topic``: 2-4 sentences, sometimes with an ambiguous borrowed sentence."""
    t = TOPICS[topic]
    sentences = [f"{rng.choice(t['subjects'])} {p}." for p in rng.sample(t["phrases"], rng.randint(1, 3))]
    sentences.append(rng.choice(t["closers"]))
    if t["ambiguous"] and rng.random() < ambiguous_p:
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(t["ambiguous"]))
    return " ".join(sentences)


def prose_corpus(n: int = 400, forbidden: str = "astronomy", seed: int = 0) -> list[dict]:
    """``n`` labelled documents, topics in turn: {"id", "text", "domain", "label"}."""
    if forbidden not in TOPICS:
        raise ValueError(f"unknown topic {forbidden!r}; expected one of {sorted(TOPICS)}")
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        out.append({"id": f"prose-{seed}-{i}", "text": prose_document(topic, rng), "domain": topic,
                    "label": "forbidden" if topic == forbidden else "allowed"})
    return out


def prose_policy(forbidden: str = "astronomy", n_exemplars: int = 16, seed: int = 10_000) -> Policy:
    """A policy forbidding ``forbidden``: its partial blocklist, exemplars drawn with a seed disjoint from
    the corpus's, and counter-exemplars that are other topics' ambiguous sentences."""
    rng = random.Random(seed)
    others = [t for t in sorted(TOPICS) if t != forbidden]
    return Policy(
        name=f"prose-{forbidden}",
        forbidden=[ForbiddenDomain(
            name=forbidden,
            description=f"Everything about {forbidden} (a benign stand-in for a forbidden domain).",
            keywords=KEYWORDS[forbidden], regexes=REGEXES[forbidden],
            exemplars=[prose_document(forbidden, rng) for _ in range(n_exemplars)],
            counter_exemplars=[s for t in others for s in TOPICS[t]["ambiguous"]],
        )],
        allowed=[AllowedDomain(name=t, exemplars=[prose_document(t, rng) for _ in range(n_exemplars // 2)])
                 for t in others],
    )
