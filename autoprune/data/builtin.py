"""Built-in dataset readers, registered through the same hook a third-party reader uses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from autoprune.data.base import ReIDDataset
from autoprune.hookspecs import hookimpl


def read_synth(name: str, data_root: str | Path = "data", **options: Any) -> ReIDDataset:
    """Generate synthetic domain ``name`` (once, cached on disk) and read it back as Market-1501."""
    from autoprune.data import readers, synth

    key = hashlib.sha256(json.dumps({"domain": name, **options}, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(data_root) / "synth" / f"{name}-{key}"
    synth.generate(out, domain=name, **options)
    ds = readers.read_market1501(out)
    ds.name = f"synth:{name}"
    return ds


def _lazy(function: str) -> Callable[..., ReIDDataset]:
    """A reader imported on first call, so start-up does not import scipy and friends."""

    def reader(*args: Any, **kwargs: Any) -> ReIDDataset:
        from autoprune.data import readers

        return getattr(readers, function)(*args, **kwargs)

    reader.__name__ = function
    return reader


BUILTIN_READERS = ("market1501", "dukemtmc", "msmt17", "cuhk03", "folder")


@hookimpl
def autoprune_register_datasets(register: Callable[..., None]) -> None:
    for name in BUILTIN_READERS:
        register(name, _lazy(f"read_{name}"))
    register("cuhk03_labeled", _cuhk03_labeled)
    register("synth", read_synth)


def _cuhk03_labeled(root: str) -> ReIDDataset:
    """CUHK03 new protocol, manually labeled boxes (``cuhk03:`` reads the detected ones)."""
    from autoprune.data import readers

    return readers.read_cuhk03(root, labeled=True)
