"""The demo configuration: the embedded arithmetic world as one data source among others.

This package and ``surgical.world`` are the only places that import the world. The `--demo` flags of the
stage CLIs and ``surgical demo`` resolve their inputs here (the world's cached teacher, its suite, its corpus)
into plain files, which the stages then read exactly as they read a user's own.
"""

from __future__ import annotations

from pathlib import Path


def world_corpus(world_cfg=None, split: str = "train", domains=None) -> list[dict]:
    """The world's ``split`` as a labelled text corpus (the demo's curate input)."""
    from ..world.corpus import world_corpus as _corpus

    return _corpus(world_cfg, split=split, domains=domains)


def world_config(cfg=None):
    from ..config import WorldConfig

    return cfg.world if cfg is not None else WorldConfig()


def suite_path(cfg=None) -> Path:
    """The world's suite manifest for ``cfg.world`` (written once under $SURGICAL_HOME)."""
    from ..world.suite import world_suite_path

    return world_suite_path(world_config(cfg))


def teacher_dir(cfg=None, quiet: bool = False) -> Path:
    """The world's teacher for ``cfg`` (trained and cached on first use)."""
    from ..config import demo_config
    from ..world.teacher import get_or_train_teacher

    cfg = cfg or demo_config()
    return get_or_train_teacher(cfg.world, cfg.teacher, quiet=quiet)[0]


def world_teacher(cfg, quiet: bool = False) -> tuple[Path, bool, dict]:
    """The pipeline's teacher stage on the world: (teacher dir, trained now?, its teacher.json record)."""
    from ..world.teacher import get_or_train_teacher, load_teacher_record

    tdir, trained = get_or_train_teacher(cfg.world, cfg.teacher, quiet=quiet)
    return tdir, trained, load_teacher_record(tdir)


def cached_teacher_dir(cfg=None) -> Path:
    """Where the world's teacher for ``cfg`` is cached (it may not exist yet; nothing is trained)."""
    from ..config import demo_config
    from ..world.teacher import teacher_dir as _teacher_dir

    cfg = cfg or demo_config()
    return _teacher_dir(cfg.world, cfg.teacher)


# ---------------------------------------------------------------- stage inputs (distill, generate, baselines)


def _world_bundle(src=None):
    """A built world from a built world (returned as is), a pipeline config, a WorldConfig or None."""
    if hasattr(src, "splits"):
        return src
    from ..config import WorldConfig
    from ..world import build_world

    return build_world(src if isinstance(src, WorldConfig) else world_config(src))


def distill_records(world=None, domains=("add", "sub"), split: str = "train") -> list[dict]:
    """World problems of ``domains`` as distill records (worked form; ``world``: a built world or a config)."""
    wb = _world_bundle(world)
    recs = []
    for d in domains:
        for i, p in enumerate(wb.splits[split][d]):
            recs.append({"id": f"{split}-{d}-{i}", "prompt": p.worked_prompt, "completion": p.worked_target,
                         "text": p.worked_text, "domain": d, "answer": p.answer,
                         "label": "forbidden" if p.forbidden else "allowed"})
    return recs


def unlearn_records(world=None, domains=("mul", "div"), split: str = "train") -> list[dict]:
    """Worked-form problems of ``domains`` as {"prompt", "completion", "domain"} unlearning records."""
    wb = _world_bundle(world)
    return [{"prompt": p.worked_prompt, "completion": p.worked_target, "domain": d}
            for d in domains for p in wb.splits[split][d]]


def distill_inputs(cfg=None, quiet: bool = True):
    """(teacher dir, gold records, forbidden records, suite path) of the demo: gold = add/sub worked problems
    of the TRAIN split, forbidden = mul/div/mixed (what curate would quarantine)."""
    from ..config import demo_config

    cfg = cfg or demo_config()
    wb = _world_bundle(cfg)
    return (teacher_dir(cfg, quiet=quiet), distill_records(wb, ("add", "sub")),
            distill_records(wb, ("mul", "div", "mixed")), suite_path(cfg))


def generate_prompts(cfg=None, gcfg=None) -> list[dict]:
    """``gcfg.demo_per_domain`` worked prompts (with their ``answer``) of each of ``gcfg.demo_domains`` from
    the world's train split."""
    from collections import Counter

    from ..config import demo_config
    from ..world.corpus import world_corpus

    cfg = cfg or demo_config()
    gcfg = gcfg or cfg.generate
    per: Counter = Counter()
    out = []
    for r in world_corpus(cfg.world, split="train", domains=tuple(gcfg.demo_domains)):
        if per[r["domain"]] < gcfg.demo_per_domain:
            per[r["domain"]] += 1
            out.append(r)
    return out


# ---------------------------------------------------------------- the pipeline's data stage on the world


def write_world_data(cfg, out_dir) -> dict:
    """The world as a data source, written as plain files under ``out_dir``: the world (``suite/suite.yaml`` and
    the rest, see ``surgical.world.write_world``), ``corpus.jsonl`` (the ``curate.world_split`` split, every
    domain, labelled: curate's input) and ``eval.jsonl`` (the test split: curate's held-out set). Returns the
    paths and counts the data stage records."""
    from ..io import write_jsonl
    from ..world import build_world, write_world

    out = Path(out_dir)
    write_world(cfg.world, out)
    corpus, held_out = out / "corpus.jsonl", out / "eval.jsonl"
    write_jsonl(corpus, world_corpus(cfg.world, split=cfg.curate.world_split))
    write_jsonl(held_out, world_corpus(cfg.world, split="test"))
    wb = build_world(cfg.world)
    return {"suite": out / "suite" / "suite.yaml", "corpus": [corpus], "eval": held_out,
            "counts": {s: {d: len(v) for d, v in wb.splits[s].items()} for s in ("train", "val", "test")},
            "world_data_sha256": wb.data_hash}
