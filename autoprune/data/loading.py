"""Images to batches: decoding with an in-memory cache, P x K identity sampling, batch augmentation.

Images are decoded and resized once to the input size and kept as uint8 (a 128x64 crop is 24 KiB, so
tens of thousands fit in memory); augmentation runs on whole batches on the training device. On two CPU
cores this keeps loading far below the cost of a forward/backward pass.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from autoprune.data.base import Sample
from autoprune.errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def decode(path: str, size: tuple[int, int]) -> torch.Tensor:
    """One image as uint8 [3, H, W] at ``size`` (height, width); a corrupt file is a UserError naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise UserError(
            f"image {path} cannot be read ({type(exc).__name__}: {exc}); remove or replace the file"
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class ImageStore:
    """Decoded images of a sample list, decoded on first use and cached."""

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int]) -> None:
        self.samples = list(samples)
        self.size = (int(size[0]), int(size[1]))
        self._cache: list[torch.Tensor | None] = [None] * len(self.samples)
        self.pids = torch.tensor([s[1] for s in self.samples], dtype=torch.long)
        self.camids = torch.tensor([s[2] for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        out = []
        for i in indices:
            img = self._cache[i]
            if img is None:
                img = decode(self.samples[i][0], self.size)
                self._cache[i] = img
            out.append(img)
        return torch.stack(out)

    def preload(self) -> None:
        self.get(range(len(self)))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float, ImageNet-normalised."""
    x = x.float().div_(255.0)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 10, erasing: float = 0.0) -> torch.Tensor:
    """Standard re-ID augmentation on a normalised batch: flip, pad-and-crop, optional random erasing."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(3), x)
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        ys = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        xs = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        x = torch.stack([padded[i, :, ys[i] : ys[i] + h, xs[i] : xs[i] + w] for i in range(b)])
    if erasing > 0:  # Zhong et al. 2020: a random rectangle of area 2%-40%, aspect 0.3-3.3, filled with noise
        for i in range(b):
            if torch.rand(1, generator=gen).item() >= erasing:
                continue
            for _ in range(10):
                area = h * w * (0.02 + 0.38 * torch.rand(1, generator=gen).item())
                aspect = float(np.exp(np.log(0.3) + (np.log(3.3) - np.log(0.3)) * torch.rand(1, generator=gen).item()))
                eh, ew = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
                if eh < h and ew < w:
                    y0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
                    x0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
                    x[i, :, y0 : y0 + eh, x0 : x0 + ew] = torch.randn(3, eh, ew, generator=gen).to(x.device)
                    break
    return x


class IdentitySampler:
    """P x K batches (P identities, K images each), as torchreid's RandomIdentitySampler.

    Identities with fewer than K images are sampled with replacement. Deterministic given ``seed`` and
    the epoch number.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0) -> None:
        if batch_size % num_instances:
            raise UserError(f"batch size {batch_size} must be a multiple of num_instances {num_instances}")
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            self.by_pid[int(pid)].append(i)
        self.pids = sorted(self.by_pid)
        self.p = batch_size // num_instances
        self.k = num_instances
        self.seed = seed
        if len(self.pids) < self.p:
            raise UserError(
                f"the training split has {len(self.pids)} identities but a batch needs {self.p} "
                f"(batch_size / num_instances); lower data.batch_size"
            )

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 100003 + epoch)
        chunks: dict[int, list[list[int]]] = {}
        for pid in self.pids:
            idxs = list(self.by_pid[pid])
            if len(idxs) < self.k:
                idxs = [rng.choice(idxs) for _ in range(self.k)]
            rng.shuffle(idxs)
            chunks[pid] = [idxs[i : i + self.k] for i in range(0, len(idxs) - self.k + 1, self.k)]
        out: list[list[int]] = []
        available = [pid for pid in self.pids if chunks[pid]]
        while len(available) >= self.p:
            chosen = rng.sample(available, self.p)
            batch: list[int] = []
            for pid in chosen:
                batch.extend(chunks[pid].pop())
            out.append(batch)
            available = [pid for pid in available if chunks[pid]]
        return out


def sequential_batches(n: int, batch_size: int) -> Iterator[list[int]]:
    for start in range(0, n, batch_size):
        yield list(range(start, min(n, start + batch_size)))
