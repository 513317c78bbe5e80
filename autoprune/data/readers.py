"""Readers for the re-ID layouts torchreid / fast-reid users already have on disk.

Each ``read_<name>(root)`` returns a :class:`ReIDDataset` with the same (image_path, pid, camid) lists
torchreid builds: camids 0-based, train pids relabelled 0..N-1 in sorted order, query/gallery pids as on
disk. Bad input raises :class:`UserError` at load time (missing folders, unparseable names, empty splits,
a query set with nothing to match), never a silently empty dataset.

Layouts (ROOT is what the user passes; the bracketed folder may sit in between):

* ``market1501``: ROOT[/Market-1501-v15.09.15]/{bounding_box_train,query,bounding_box_test}/
  ``0002_c1s1_000451_03.jpg``; pid -1 is junk (dropped), pid 0 a distractor (gallery only), cameras c1-c6.
* ``dukemtmc``: ROOT[/DukeMTMC-reID]/..., same names (``0001_c2_f0046182.jpg``), cameras c1-c8.
* ``msmt17``: ROOT[/MSMT17_V1 or /MSMT17_V2]/list_{train,val,query,gallery}.txt with lines
  ``relative/path.jpg pid``; images under train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2);
  camid is the third ``_`` field of the file name (1-based on disk); train = list_train + list_val.
* ``cuhk03``: ROOT[/cuhk03]/cuhk03_new_protocol_config_{detected,labeled}.mat plus
  images_{detected,labeled}/ (as torchreid extracts them): the 767/700 "new protocol".
* ``folder`` (your own cameras)::

      ROOT/
        train/    <pid>_c<cam>_<anything>.jpg   e.g. 0007_c2_frame000123.jpg
        query/    <pid>_c<cam>_<anything>.jpg
        gallery/  <pid>_c<cam>_<anything>.jpg

  pid is an integer, cam an integer >= 1 (c1 is the first camera); .jpg/.jpeg/.png are read, other
  files (and hidden ones such as macOS ``._*``) ignored. As in Market-1501, pid -1 marks junk (ignored)
  and pid 0 distractors (kept in the gallery only). Every query needs its identity in the gallery seen
  by a different camera to count in evaluation.

The torchreid parent folders (``market1501/``, ``dukemtmc-reid/``, ``msmt17/``, ``cuhk03/``) are accepted
too, so a torchreid ``root`` plus dataset folder works as is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from autoprune.data.base import ReIDDataset, Sample
from autoprune.errors import UserError

__all__ = ["check_images", "read_cuhk03", "read_dukemtmc", "read_folder", "read_market1501", "read_msmt17"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_PATTERN = "<pid>_c<cam>_..., e.g. 0002_c1s1_000451_03.jpg (pid -1 = junk, 0 = distractor)"


def _abs(root: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(root))))


def _locate(root: str | Path, what: str, nests: Sequence[str], required: Sequence[str]) -> Path:
    """The first of ROOT or ROOT/<nest> holding every ``required`` entry; else a UserError naming the gap."""
    base = _abs(root)
    if not base.is_dir():
        raise UserError(
            f"{what} root {base} does not exist or is not a folder; pass the folder that contains {required[0]}"
        )

    def present(path: Path) -> bool:  # entries with a suffix (.txt, .mat) are files, the rest folders
        return path.is_file() if path.suffix else path.is_dir()

    candidates = [base] + [base / n for n in nests]
    for cand in candidates:
        if all(present(cand / r) for r in required):
            return cand
    # Report against the candidate that is closest to complete (the first one on ties).
    best = max(candidates, key=lambda c: sum(present(c / r) for r in required))
    missing = next(r for r in required if not present(best / r))
    also = f" (directly or inside {nests[0]}/)" if nests else ""
    raise UserError(
        f"{what}: expected {best / missing} is missing; {what} needs {', '.join(required)} under {base}{also}"
    )


def _list_images(folder: Path) -> list[Path]:
    images = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not images:
        raise UserError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in {folder}; put the split's images there")
    return images


def _parse_market_dir(folder: Path, max_cam: int | None, what: str) -> list[Sample]:
    """(path, pid, 0-based camid) for every image in ``folder``, junk included; names must parse."""
    out = []
    for path in _list_images(folder):
        m = _MARKET_NAME.match(path.name)
        if m is None or int(m.group(1)) < -1:
            raise UserError(f"{what}: cannot parse pid/camera from {path}; expected names like {_MARKET_PATTERN}")
        pid, cam = _id64(m.group(1), "person id", path, what), _id64(m.group(2), "camera id", path, what)
        if max_cam is not None and not 1 <= cam <= max_cam:
            raise UserError(
                f"{what}: camera c{cam} in {path} is out of range c1..c{max_cam}; use folder:ROOT "
                f"for your own camera numbering"
            )
        if cam < 1:
            raise UserError(f"{what}: camera c{cam} in {path} is invalid; cameras are 1-based (c1 is the first)")
        out.append((str(path), pid, cam - 1))
    return out


def _id64(text: str, kind: str, where: Path | str, what: str) -> int:
    """A person or camera id from a file name or list: it must fit in 64 bits (tensors hold them)."""
    value = int(text) if len(text) <= 20 else None  # longer cannot fit (and int() refuses > 4300 digits)
    if value is None or not -(2**63) <= value < 2**63:
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise UserError(
            f"{what}: the {kind} {shown} in {where} does not fit in 64 bits; renumber the "
            f"identities and cameras with small integers"
        )
    return value


def _relabel(samples: Iterable[Sample]) -> list[Sample]:
    samples = list(samples)
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in samples}))}
    return [(p, label[pid], cam) for p, pid, cam in samples]


def _nonempty(samples: list[Sample], what: str, split: str, where: Path | str, why: str = "") -> list[Sample]:
    if not samples:
        raise UserError(f"{what}: the {split} split in {where} is empty{why}; add labelled images to it")
    return samples


def _check_evaluable(query: list[Sample], gallery: list[Sample], what: str, where: Path | str) -> None:
    """Raise if no query has its pid in the gallery under another camera (evaluation would be empty)."""
    cams: dict[int, set[int]] = {}
    for _, pid, cam in gallery:
        cams.setdefault(pid, set()).add(cam)
    if not any(cams.get(pid, set()) - {cam} for _, pid, cam in query):
        raise UserError(
            f"{what}: no query in {where} has a gallery image of the same pid from a different "
            f"camera, so evaluation would be empty; check that query and gallery share identities"
        )


def _market_like(
    root: str | Path, name: str, what: str, nests: Sequence[str], splits: tuple[str, str, str], max_cam: int | None
) -> ReIDDataset:
    data_dir = _locate(root, what, nests, splits)
    train_dir, query_dir, gallery_dir = (data_dir / s for s in splits)
    drop = " after dropping junk (pid -1) and distractors (pid 0)"
    train = [s for s in _parse_market_dir(train_dir, max_cam, what) if s[1] > 0]
    query = [s for s in _parse_market_dir(query_dir, max_cam, what) if s[1] > 0]
    gallery = [s for s in _parse_market_dir(gallery_dir, max_cam, what) if s[1] >= 0]
    _nonempty(train, what, "train", train_dir, drop)
    _nonempty(query, what, "query", query_dir, drop)
    _nonempty(gallery, what, "gallery", gallery_dir, " after dropping junk (pid -1)")
    _check_evaluable(query, gallery, what, data_dir)
    return ReIDDataset(name, _relabel(train), query, gallery, root=str(data_dir))


def read_market1501(root: str | Path) -> ReIDDataset:
    """Market-1501 (bounding_box_train / query / bounding_box_test), torchreid semantics."""
    return _market_like(
        root,
        "market1501",
        "Market-1501",
        ("Market-1501-v15.09.15", "market1501", "market1501/Market-1501-v15.09.15"),
        ("bounding_box_train", "query", "bounding_box_test"),
        max_cam=6,
    )


def read_dukemtmc(root: str | Path) -> ReIDDataset:
    """DukeMTMC-reID: Market-1501 naming with 8 cameras."""
    return _market_like(
        root,
        "dukemtmc",
        "DukeMTMC-reID",
        ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid"),
        ("bounding_box_train", "query", "bounding_box_test"),
        max_cam=8,
    )


def read_folder(root: str | Path) -> ReIDDataset:
    """Your own cameras: ROOT/{train,query,gallery} with ``<pid>_c<cam>_<anything>.jpg`` names."""
    return _market_like(root, "folder", "folder dataset", (), ("train", "query", "gallery"), max_cam=None)


_MSMT_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


def _check_exist(samples: list[Sample], what: str, listing: Path) -> None:
    missing = [p for p, _, _ in samples if not os.path.isfile(p)]
    if missing:
        raise UserError(
            f"{what}: {len(missing)} image(s) listed in {listing} are missing, e.g. {missing[0]}; "
            f"extract the dataset's images next to the list files"
        )


def _read_msmt_list(list_path: Path, image_dir: Path) -> list[Sample]:
    out = []
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"MSMT17: {list_path} is not UTF-8 text (byte {exc.start}); download the list file again"
        ) from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        fields = Path(parts[0]).name.split("_")
        if len(parts) != 2 or not parts[1].isdecimal() or len(fields) < 3 or not fields[2].isdecimal():
            raise UserError(
                f"MSMT17: cannot parse line {lineno} of {list_path}: {line.strip()[:200]!r}; expected "
                f"'<relative/path.jpg> <pid>' with names like 0000_000_01_0303morning_0015_0.jpg"
            )
        where = f"line {lineno} of {list_path}"
        out.append(
            (
                str(image_dir / parts[0]),
                _id64(parts[1], "person id", where, "MSMT17"),
                _id64(fields[2], "camera id", where, "MSMT17") - 1,
            )
        )
    return out


def read_msmt17(root: str | Path) -> ReIDDataset:
    """MSMT17 V1 or V2 from its list files; train is list_train + list_val as torchreid does."""
    what = "MSMT17"
    lists = ("list_train.txt", "list_query.txt", "list_gallery.txt")
    data_dir = _locate(root, what, ("MSMT17_V1", "MSMT17_V2", "msmt17/MSMT17_V1", "msmt17/MSMT17_V2"), lists)
    version = next(
        (v for v, (tr, te) in _MSMT_VERSIONS.items() if (data_dir / tr).is_dir() and (data_dir / te).is_dir()), None
    )
    if version is None:
        raise UserError(
            f"{what}: {data_dir} has the list files but no image folders; expected train/ and test/ "
            f"(MSMT17_V1) or mask_train_v2/ and mask_test_v2/ (MSMT17_V2) there"
        )
    train_dir, test_dir = (data_dir / d for d in _MSMT_VERSIONS[version])
    train = _read_msmt_list(data_dir / "list_train.txt", train_dir)
    if (data_dir / "list_val.txt").is_file():
        train += _read_msmt_list(data_dir / "list_val.txt", train_dir)
    query = _read_msmt_list(data_dir / "list_query.txt", test_dir)
    gallery = _read_msmt_list(data_dir / "list_gallery.txt", test_dir)
    for split, samples, listing in (
        ("train", train, "list_train.txt"),
        ("query", query, "list_query.txt"),
        ("gallery", gallery, "list_gallery.txt"),
    ):
        _nonempty(samples, what, split, data_dir / listing)
        _check_exist(samples, what, data_dir / listing)
    _check_evaluable(query, gallery, what, data_dir)
    return ReIDDataset("msmt17", _relabel(train), query, gallery, root=str(data_dir), extra={"version": version})


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mat_str(x: object) -> str:
    """A string out of loadmat's nesting (cell arrays come back as object arrays of 1-element arrays)."""
    while not isinstance(x, str):
        try:
            x = x.flat[0] if x.size else ""  # type: ignore[attr-defined]
        except AttributeError:
            x = str(x)
    return x.strip()


def _read_cuhk03_mat(mat_path: Path, what: str, mat_name: str) -> tuple[dict[str, Any], Any, list[str], Any]:
    """torchreid's new-protocol split file: its fields, the labels, the file list and the camera field (or None)."""
    import numpy as np
    import scipy.io

    try:
        split = scipy.io.loadmat(str(mat_path))
    except Exception as exc:  # scipy raises several types for a corrupt/foreign file
        raise UserError(
            f"{what}: cannot read {mat_path} ({_reason(exc)}); download the new-protocol split file again"
        ) from None
    for key in ("train_idx", "query_idx", "gallery_idx", "labels", "filelist"):
        if key not in split:
            raise UserError(
                f"{what}: {mat_path} has no field {key!r}; use torchreid's "
                f"{mat_name} (fields train_idx, query_idx, gallery_idx, labels, filelist, camId)"
            )
    labels = np.asarray(split["labels"]).astype(np.int64).ravel()
    files = [_mat_str(f) for f in np.asarray(split["filelist"], dtype=object).ravel()]
    cam_field = np.asarray(split["camId"]).astype(np.int64).ravel() if "camId" in split else None
    if len(files) != len(labels):
        raise UserError(
            f"{what}: {mat_path} lists {len(files)} files but {len(labels)} labels; "
            f"download the new-protocol split file again"
        )
    return split, labels, files, cam_field


def read_cuhk03(root: str | Path, labeled: bool = False) -> ReIDDataset:
    """CUHK03 767/700 new protocol from torchreid's split .mat and extracted images (detected by default)."""
    import numpy as np

    kind = "labeled" if labeled else "detected"
    what = f"CUHK03 ({kind})"
    mat_name, img_name = f"cuhk03_new_protocol_config_{kind}.mat", f"images_{kind}"
    data_dir = _locate(root, what, ("cuhk03",), (mat_name, img_name))
    mat_path, img_dir = data_dir / mat_name, data_dir / img_name
    split, labels, files, cam_field = _read_cuhk03_mat(mat_path, what, mat_name)

    def take(key: str) -> list[Sample]:
        idx = np.asarray(split[key]).astype(np.int64).ravel() - 1  # the .mat indices are 1-based
        if idx.size and (idx.min() < 0 or idx.max() >= len(files)):
            raise UserError(
                f"{what}: {key} in {mat_path} indexes outside 1..{len(files)}; "
                f"download the new-protocol split file again"
            )
        out = []
        for i in idx:
            fields = files[i].split("_")
            if len(fields) >= 3 and fields[2].isdigit():
                cam = int(fields[2]) - 1  # torchreid: camid from the name, e.g. 1_001_1_01.png -> 0
            elif cam_field is not None and len(cam_field) == len(files):
                cam = int(cam_field[i]) - 1
            else:
                raise UserError(
                    f"{what}: cannot parse the camera from {files[i]!r} in {mat_path}; expected "
                    f"names like 1_001_1_01.png (campair_pid_cam_index)"
                )
            out.append((str(img_dir / files[i]), int(labels[i]), cam))
        return out

    train, query, gallery = take("train_idx"), take("query_idx"), take("gallery_idx")
    for split_name, samples, key in (
        ("train", train, "train_idx"),
        ("query", query, "query_idx"),
        ("gallery", gallery, "gallery_idx"),
    ):
        _nonempty(samples, what, split_name, f"{mat_path} ({key})")
        _check_exist(samples, what, mat_path)
    _check_evaluable(query, gallery, what, data_dir)
    return ReIDDataset("cuhk03", _relabel(train), query, gallery, root=str(data_dir), extra={"labeled": labeled})


def check_images(samples: Sequence[Sample], limit: int | None = None) -> int:
    """Decode each image (the first ``limit``) so a corrupt file fails at load time, not epochs later.

    Returns the number of images checked.
    """
    from PIL import Image

    chosen = samples if limit is None else samples[:limit]
    for path, _, _ in chosen:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise UserError(
                f"image {path} cannot be read ({_reason(exc)}); replace or delete it and remove it from the split"
            ) from None
    return len(chosen)
