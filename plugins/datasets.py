"""Built-in dataset readers, registered through the same hook a third-party reader uses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune import hookimpl
from autoprune.data.base import ReIDDataset


def read_synth(name: str, data_root: str | Path = "data", **options: Any) -> ReIDDataset:
    """The synthetic re-ID domain ``name`` (A, B, C), generated once under data.root and read back as Market-1501."""
    from autoprune.data import readers, synth

    key = hashlib.sha256(json.dumps({"domain": name, **options}, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(data_root) / "synth" / f"{name}-{key}"
    synth.generate(out, domain=name, **options)
    ds = readers.read_market1501(out)
    ds.name = f"synth:{name}"
    return ds


def _lazy(function: str, doc: str) -> Callable[..., ReIDDataset]:
    """A reader imported on first call, so start-up does not import scipy and friends."""

    def reader(*args: Any, **kwargs: Any) -> ReIDDataset:
        from autoprune.data import readers

        return getattr(readers, function)(*args, **kwargs)

    reader.__name__ = function
    reader.__doc__ = doc
    return reader


# name -> one line for `autoprune plugins` and docs/plugins.md (the readers' own docstrings, without importing them)
BUILTIN_READERS = {
    "market1501": "Market-1501 (bounding_box_train / query / bounding_box_test), torchreid semantics.",
    "dukemtmc": "DukeMTMC-reID: Market-1501 naming with 8 cameras.",
    "msmt17": "MSMT17 V1 or V2 from its list files; train is list_train + list_val as torchreid does.",
    "cuhk03": "CUHK03 767/700 new protocol from torchreid's split .mat and extracted images (detected boxes).",
    "folder": "Your own cameras: ROOT/{train,query,gallery} with <pid>_c<cam>_<anything>.jpg names.",
}


@hookimpl
def autoprune_register_datasets(register: Callable[..., None]) -> None:
    for name, doc in BUILTIN_READERS.items():
        register(name, _lazy(f"read_{name}", doc))
    register("cuhk03_labeled", _cuhk03_labeled)
    register("synth", read_synth)


def _cuhk03_labeled(root: str) -> ReIDDataset:
    """CUHK03 new protocol, manually labeled boxes (``cuhk03:`` reads the detected ones)."""
    from autoprune.data import readers

    return readers.read_cuhk03(root, labeled=True)
