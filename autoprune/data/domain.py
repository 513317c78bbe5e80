"""A domain ready for training and scoring: train, query and gallery image stores at the input size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoprune.data import load_dataset
from autoprune.data.base import ReIDDataset
from autoprune.data.loading import ImageStore
from autoprune.errors import UserError


@dataclass
class Domain:
    """One domain's splits; ``num_classes`` is the number of training identities."""

    spec: str
    dataset: ReIDDataset
    train: ImageStore
    query: ImageStore
    gallery: ImageStore

    @property
    def num_classes(self) -> int:
        return self.dataset.num_train_pids


def build_domain(spec: str, cfg: dict[str, Any], preload: bool = True) -> Domain:
    """Load ``spec`` with the config's data options; images are decoded once (and checked) up front."""
    data = cfg["data"]
    ds = load_dataset(spec, data_root=data["root"], synth=data["synth"])
    if not ds.train:
        raise UserError(f"dataset {spec} has no training images; check its train folder")
    size = tuple(cfg["model"]["input_size"])
    dom = Domain(spec, ds, ImageStore(ds.train, size), ImageStore(ds.query, size), ImageStore(ds.gallery, size))
    if preload or data.get("check_images", True):
        # Decoding everything now finds a corrupt image at load time, not three epochs later.
        for store in (dom.train, dom.query, dom.gallery):
            store.preload()
    return dom
