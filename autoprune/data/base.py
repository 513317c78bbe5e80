"""The dataset record every reader returns, shaped like torchreid's (image_path, pid, camid) lists."""

from __future__ import annotations

from dataclasses import dataclass, field

Sample = tuple[str, int, int]  # (image_path, pid, camid); camid is 0-based


@dataclass
class ReIDDataset:
    """A re-ID dataset split: train pids relabelled 0..N-1, query/gallery pids as on disk."""

    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    root: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({cam for _, _, cam in self.train})
