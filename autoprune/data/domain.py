"""A domain ready for training and scoring: train, query and gallery image stores at the input size."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from autoprune.data import load_dataset
from autoprune.data.base import ReIDDataset, Sample
from autoprune.data.loading import ImageStore
from autoprune.errors import UserError


@dataclass
class Domain:
    """One domain's splits.

    ``val_query``/``val_gallery`` are built from training identities held out of fine-tuning: the search
    optimises rank-1 on them, so the test split (query/gallery) stays an unbiased final score.
    """

    spec: str
    dataset: ReIDDataset
    train: ImageStore
    query: ImageStore
    gallery: ImageStore
    val_query: ImageStore | None = None
    val_gallery: ImageStore | None = None

    @property
    def num_classes(self) -> int:
        return int(self.train.pids.max()) + 1 if len(self.train) else 0


def split_validation(
    train: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Hold out ``fraction`` of the training identities as a validation query/gallery.

    Each held-out identity (seen by at least two cameras) gives one query per camera, its first image
    there, and the rest of its images as gallery: about three times the queries of one per identity, so
    the search's objective is less noisy at no extra feature extraction. Every query still has a
    cross-camera match in the gallery (a camera's first image is moved to the gallery where it would
    not). Remaining train pids are relabelled 0..N-1.
    """
    by_pid: dict[int, list[Sample]] = {}
    for s in train:
        by_pid.setdefault(s[1], []).append(s)
    eligible = sorted(p for p, items in by_pid.items() if len({c for _, _, c in items}) >= 2)
    n_val = max(1, int(round(fraction * len(by_pid)))) if fraction > 0 else 0  # a tiny dataset still gets one
    rng = random.Random(seed)
    val_pids = set(rng.sample(eligible, min(n_val, len(eligible))))
    query, gallery = [], []
    for pid in sorted(val_pids):
        items = sorted(by_pid[pid], key=lambda s: (s[2], s[0]))
        firsts = [s for i, s in enumerate(items) if i == 0 or items[i - 1][2] != s[2]]
        rest = [s for s in items if s not in firsts]
        for q in firsts:  # a query with no image left in another camera goes to the gallery instead
            if any(g[2] != q[2] for g in rest):
                query.append(q)
            else:
                rest.append(q)
        gallery.extend(rest)
    kept = sorted(p for p in by_pid if p not in val_pids)
    relabel = {p: i for i, p in enumerate(kept)}
    new_train = [(path, relabel[pid], cam) for path, pid, cam in train if pid in relabel]
    return new_train, query, gallery


TARGET_SYNTH = {"target_num_train_ids": "num_train_ids", "target_num_test_ids": "num_test_ids"}


def source_synth(synth: dict[str, Any]) -> dict[str, Any]:
    """The generator's options for the source domain: ``data.synth`` without the target-only sizes."""
    return {k: v for k, v in synth.items() if k not in TARGET_SYNTH}


def target_synth(synth: dict[str, Any]) -> dict[str, Any]:
    """The target's: ``target_num_*_ids`` replace ``num_*_ids`` where set, so a benchmark can have a large
    target test/validation split (many queries, a low standard error) without a larger source to train on."""
    out = source_synth(synth)
    out.update({TARGET_SYNTH[k]: v for k, v in synth.items() if k in TARGET_SYNTH and v is not None})
    return out


def build_domain(
    spec: str, cfg: dict[str, Any], val_fraction: float = 0.0, preload: bool = True, role: str = "source"
) -> Domain:
    """Load ``spec`` with the config's data options; images are decoded once (and checked) up front."""
    data = cfg["data"]
    synth = target_synth(data["synth"]) if role == "target" else source_synth(data["synth"])
    ds = load_dataset(spec, data_root=data["root"], synth=synth)
    if not ds.train:
        raise UserError(f"dataset {spec} has no training images; check its train folder")
    size = tuple(cfg["model"]["input_size"])
    vq: list[Sample] = []
    vg: list[Sample] = []
    train = list(ds.train)
    if val_fraction > 0:
        train, vq, vg = split_validation(train, val_fraction, cfg["seed"])
        if not vq:
            raise UserError(
                f"dataset {spec}: no training identity is seen by two cameras, so no validation "
                f"split can be held out; set data.val_fraction: 0"
            )
    dom = Domain(
        spec,
        ds,
        ImageStore(train, size),
        ImageStore(ds.query, size),
        ImageStore(ds.gallery, size),
        ImageStore(vq, size) if vq else None,
        ImageStore(vg, size) if vg else None,
    )
    if preload or data.get("check_images", True):
        # Decoding everything now finds a corrupt image at load time, not three epochs later.
        for store in (dom.train, dom.query, dom.gallery, dom.val_query, dom.val_gallery):
            if store is not None:
                store.preload()
    return dom


def load_domains(cfg: dict[str, Any]) -> tuple[Domain | None, Domain]:
    """The source (None when ``data.source`` is null: a trained model is pruned) and the target of a search;
    the target holds out its validation split (``data.val_fraction``)."""
    source = cfg["data"]["source"]
    return (
        build_domain(source, cfg) if source is not None else None,
        build_domain(cfg["data"]["target"], cfg, val_fraction=cfg["data"]["val_fraction"], role="target"),
    )
