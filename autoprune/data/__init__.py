"""Datasets named ``KIND:ROOT`` (``market1501:/data/market``, ``synth:B``), loaded through the plugin host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.data.base import ReIDDataset, Sample
from autoprune.errors import UserError

__all__ = ["ReIDDataset", "Sample", "load_dataset", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"dataset {spec!r} must look like KIND:ROOT, e.g. market1501:/data/Market-1501 or synth:B")
    kind, root = spec.split(":", 1)
    return kind.strip().lower(), root.strip()


def load_dataset(
    spec: str, data_root: str | Path = "data", synth: dict[str, Any] | None = None, host: Any = None
) -> ReIDDataset:
    """Read the dataset named by ``spec``; ``synth:NAME`` generates domain NAME under ``data_root`` first."""
    from autoprune.host import get_host

    kind, root = parse_spec(spec)
    reader = (host or get_host()).get("dataset", kind)
    if kind == "synth":
        return reader(root, data_root=data_root, **(synth or {}))
    return reader(root)
