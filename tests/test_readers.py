from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from autoprune.data.readers import check_images, read_cuhk03, read_dukemtmc, read_folder, read_market1501, read_msmt17
from autoprune.errors import UserError
from autoprune.testing import DatasetReaderContract


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (120, 30, 200)).save(path)


def _tree(base: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".db"):
                (base / folder / name).write_bytes(b"not an image")
            else:
                _jpg(base / folder / name)
    return base


MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s1_000101_01.jpg",
        "0007_c6s2_000201_02.jpg",
        "0005_c4s1_000001_01.jpg",
        "-1_c1s1_000001_00.jpg",
        "0000_c1s1_000002_00.jpg",
        "Thumbs.db",
    ],
    "query": ["0002_c1s1_001051_00.jpg", "0007_c3s1_001101_00.jpg", "-1_c2s1_000001_00.jpg"],
    "bounding_box_test": [
        "0002_c2s1_002051_01.jpg",
        "0002_c1s1_002052_01.jpg",
        "0007_c5s1_002101_01.jpg",
        "0000_c5s1_000003_00.jpg",
        "-1_c1s1_000004_00.jpg",
        "Thumbs.db",
    ],
}


def _names(samples: list) -> list[tuple[str, int, int]]:
    return sorted((Path(p).name, pid, cam) for p, pid, cam in samples)


def _check_market(ds, root: Path) -> None:
    assert _names(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000551_01.jpg", 0, 1),
        ("0005_c4s1_000001_01.jpg", 1, 3),
        ("0007_c3s1_000101_01.jpg", 2, 2),
        ("0007_c6s2_000201_02.jpg", 2, 5),
    ]
    assert _names(ds.query) == [("0002_c1s1_001051_00.jpg", 2, 0), ("0007_c3s1_001101_00.jpg", 7, 2)]
    assert _names(ds.gallery) == [
        ("0000_c5s1_000003_00.jpg", 0, 4),
        ("0002_c1s1_002052_01.jpg", 2, 0),
        ("0002_c2s1_002051_01.jpg", 2, 1),
        ("0007_c5s1_002101_01.jpg", 7, 4),
    ]
    assert ds.num_train_pids == 3 and ds.num_train_cams == 5
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)
    assert Path(ds.root) == root


def test_market1501_flat(tmp_path: Path) -> None:
    root = _tree(tmp_path, MARKET)
    ds = read_market1501(root)
    assert ds.name == "market1501"
    _check_market(ds, root)


@pytest.mark.parametrize("nest", ["Market-1501-v15.09.15", "market1501", "market1501/Market-1501-v15.09.15"])
def test_market1501_nested(tmp_path: Path, nest: str) -> None:
    _tree(tmp_path / nest, MARKET)
    _check_market(read_market1501(str(tmp_path)), tmp_path / nest)


def test_market1501_camera_out_of_range(tmp_path: Path) -> None:
    files = {**MARKET, "query": MARKET["query"] + ["0002_c7s1_000001_00.jpg"]}
    with pytest.raises(UserError, match=r"camera c7 .*0002_c7s1_000001_00\.jpg.*c1\.\.c6.*folder:ROOT"):
        read_market1501(_tree(tmp_path, files))


def test_dukemtmc_eight_cameras_nested(tmp_path: Path) -> None:
    _tree(
        tmp_path / "DukeMTMC-reID",
        {
            "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0046999.jpg", "0003_c1_f0000001.jpg"],
            "query": ["0005_c7_f0000002.jpg"],
            "bounding_box_test": ["0005_c8_f0000003.jpg", "0000_c1_f0000004.jpg", "-1_c2_f0000005.jpg"],
        },
    )
    ds = read_dukemtmc(tmp_path)
    assert ds.name == "dukemtmc"
    assert _names(ds.train) == [
        ("0001_c2_f0046182.jpg", 0, 1),
        ("0001_c8_f0046999.jpg", 0, 7),
        ("0003_c1_f0000001.jpg", 1, 0),
    ]
    assert _names(ds.query) == [("0005_c7_f0000002.jpg", 5, 6)]
    assert _names(ds.gallery) == [("0000_c1_f0000004.jpg", 0, 0), ("0005_c8_f0000003.jpg", 5, 7)]


def test_folder_reader_png_and_multi_digit_cameras(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "train": ["10_c1_a.jpg", "10_c12_b.png", "3_c2_x.jpeg", "notes.txt.db"],
            "query": ["42_c3_q.jpg"],
            "gallery": ["42_c11_g.jpg", "42_c3_same_cam.jpg", "0_c1_distractor.jpg"],
        },
    )
    (root / "train" / "README.txt").write_text("ignored")
    (root / "train" / "._10_c1_a.jpg").write_bytes(b"macOS resource fork")
    ds = read_folder(root)
    assert _names(ds.train) == [("10_c12_b.png", 1, 11), ("10_c1_a.jpg", 1, 0), ("3_c2_x.jpeg", 0, 1)]
    assert _names(ds.query) == [("42_c3_q.jpg", 42, 2)]
    assert _names(ds.gallery) == [
        ("0_c1_distractor.jpg", 0, 0),
        ("42_c11_g.jpg", 42, 10),
        ("42_c3_same_cam.jpg", 42, 2),
    ]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"Market-1501 root .*nope does not exist.*bounding_box_train"):
        read_market1501(tmp_path / "nope")


def test_missing_subfolder_is_named(tmp_path: Path) -> None:
    _tree(tmp_path / "Market-1501-v15.09.15", {k: v for k, v in MARKET.items() if k != "query"})
    with pytest.raises(UserError, match=r"expected .*Market-1501-v15\.09\.15/query is missing"):
        read_market1501(tmp_path)
    with pytest.raises(UserError, match=r"expected .*/gallery is missing; folder dataset needs train, query, "):
        read_folder(_tree(tmp_path / "own", {"train": ["1_c1_a.jpg"], "query": ["1_c2_b.jpg"]}))


def test_folder_without_images(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**MARKET, "query": ["Thumbs.db"]})
    with pytest.raises(UserError, match=r"no images \(\.jpg/\.jpeg/\.png\) in .*/query"):
        read_market1501(root)


def test_unparseable_name(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, {"train": ["1_c1_a.jpg", "IMG_0001.jpg"], "query": ["1_c1_q.jpg"], "gallery": ["1_c2_g.jpg"]}
    )
    with pytest.raises(UserError, match=r"cannot parse pid/camera from .*IMG_0001\.jpg; expected names like <pid>_c"):
        read_folder(root)


def test_camera_zero_rejected_in_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train": ["1_c0_a.jpg"], "query": ["1_c1_q.jpg"], "gallery": ["1_c2_g.jpg"]})
    with pytest.raises(UserError, match=r"camera c0 in .*1_c0_a\.jpg is invalid; cameras are 1-based"):
        read_folder(root)


def test_no_query_has_a_valid_match(tmp_path: Path) -> None:
    # pid 5 only in the query camera, pid 6 only as a distractor-free other pid: nothing to evaluate.
    root = _tree(
        tmp_path,
        {
            "train": ["1_c1_a.jpg"],
            "query": ["5_c1_q.jpg", "6_c2_q.jpg"],
            "gallery": ["5_c1_g.jpg", "6_c2_g.jpg", "7_c1_g.jpg", "0_c2_d.jpg"],
        },
    )
    with pytest.raises(UserError, match=r"no query .* different camera, so evaluation would be empty"):
        read_folder(root)


def test_empty_train_after_junk(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**MARKET, "bounding_box_train": ["-1_c1s1_000001_00.jpg", "0000_c1s1_000002_00.jpg"]})
    with pytest.raises(UserError, match=r"the train split in .*bounding_box_train is empty after dropping junk"):
        read_market1501(root)


def _msmt(base: Path, train_dir: str, test_dir: str) -> None:
    lines = {
        "list_train.txt": [
            ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
            ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
            ("0001/0001_000_15_0303noon_0001_0.jpg", 1),
        ],
        "list_val.txt": [("0002/0002_000_02_0303noon_0003_1.jpg", 2)],
        "list_query.txt": [("0000/0000_000_03_0304morning_0001_0.jpg", 0), ("0009/0009_000_04_0304noon_0001_0.jpg", 9)],
        "list_gallery.txt": [
            ("0000/0000_001_07_0304morning_0002_0.jpg", 0),
            ("0009/0009_001_04_0304noon_0002_0.jpg", 9),
        ],
    }
    for name, entries in lines.items():
        img_root = base / (train_dir if name in ("list_train.txt", "list_val.txt") else test_dir)
        for rel, _ in entries:
            _jpg(img_root / rel)
        (base / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))


def test_msmt17_v1_at_root(tmp_path: Path) -> None:
    _msmt(tmp_path, "train", "test")
    ds = read_msmt17(tmp_path)
    assert ds.extra == {"version": "MSMT17_V1"}
    assert _names(ds.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0000_001_05_0303morning_0016_0.jpg", 0, 4),
        ("0001_000_15_0303noon_0001_0.jpg", 1, 14),
        ("0002_000_02_0303noon_0003_1.jpg", 2, 1),
    ]
    assert _names(ds.query) == [("0000_000_03_0304morning_0001_0.jpg", 0, 2), ("0009_000_04_0304noon_0001_0.jpg", 9, 3)]
    assert _names(ds.gallery) == [
        ("0000_001_07_0304morning_0002_0.jpg", 0, 6),
        ("0009_001_04_0304noon_0002_0.jpg", 9, 3),
    ]
    assert all(Path(p).is_file() and "/test/" in p for p, _, _ in ds.query + ds.gallery)


def test_msmt17_v2_nested(tmp_path: Path) -> None:
    _msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    ds = read_msmt17(tmp_path)
    assert ds.extra == {"version": "MSMT17_V2"} and Path(ds.root) == tmp_path / "MSMT17_V2"
    assert len(ds.train) == 4 and ds.num_train_pids == 3
    assert all("/mask_train_v2/" in p for p, _, _ in ds.train)


def test_msmt17_errors(tmp_path: Path) -> None:
    _msmt(tmp_path, "train", "test")
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"no image folders; expected train/ and test/ \(MSMT17_V1\)"):
        read_msmt17(tmp_path)
    (tmp_path / "elsewhere").rename(tmp_path / "test")
    (tmp_path / "test" / "0009" / "0009_001_04_0304noon_0002_0.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) listed in .*list_gallery\.txt are missing, e\.g\. .*0009_001"):
        read_msmt17(tmp_path)
    (tmp_path / "list_gallery.txt").write_text("0000/broken.jpg\n")
    with pytest.raises(UserError, match=r"cannot parse line 1 of .*list_gallery\.txt: '0000/broken\.jpg'"):
        read_msmt17(tmp_path)
    (tmp_path / "list_query.txt").unlink()
    with pytest.raises(UserError, match=r"expected .*list_query\.txt is missing"):
        read_msmt17(tmp_path)


def _cell(names: list[str]) -> np.ndarray:
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    return cell


def _cuhk03(base: Path, kind: str) -> list[str]:
    files = [
        "1_001_1_01.png",
        "1_001_2_06.png",
        "1_002_1_01.png",
        "1_002_2_07.png",  # train pids 1, 2
        "3_010_1_01.png",
        "3_010_2_06.png",
        "3_011_1_02.png",
        "3_011_2_08.png",
    ]  # test pids 10, 11
    labels = [1, 1, 2, 2, 10, 10, 11, 11]
    for f in files:
        _jpg(base / f"images_{kind}" / f)
    scipy.io.savemat(
        base / f"cuhk03_new_protocol_config_{kind}.mat",
        {
            "train_idx": np.array([[1], [2], [3], [4]]),
            "query_idx": np.array([[5], [7]]),
            "gallery_idx": np.array([[6], [8]]),
            "labels": np.array(labels).reshape(-1, 1),
            "filelist": _cell(files),
            "camId": np.array([1, 2, 1, 2, 1, 2, 1, 2]).reshape(-1, 1),
        },
    )
    return files


def test_cuhk03_detected_and_labeled(tmp_path: Path) -> None:
    _cuhk03(tmp_path / "cuhk03", "detected")
    _cuhk03(tmp_path / "cuhk03", "labeled")
    for labeled in (False, True):
        ds = read_cuhk03(tmp_path, labeled=labeled)
        kind = "labeled" if labeled else "detected"
        assert ds.extra == {"labeled": labeled}
        assert _names(ds.train) == [
            ("1_001_1_01.png", 0, 0),
            ("1_001_2_06.png", 0, 1),
            ("1_002_1_01.png", 1, 0),
            ("1_002_2_07.png", 1, 1),
        ]
        assert _names(ds.query) == [("3_010_1_01.png", 10, 0), ("3_011_1_02.png", 11, 0)]
        assert _names(ds.gallery) == [("3_010_2_06.png", 10, 1), ("3_011_2_08.png", 11, 1)]
        assert all(f"images_{kind}" in p for p, _, _ in ds.train)


def test_cuhk03_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"expected .*cuhk03_new_protocol_config_detected\.mat is missing"):
        read_cuhk03(_tree(tmp_path / "a", {"images_detected": []}))
    base = tmp_path / "b"
    base.mkdir()
    files = _cuhk03(base, "labeled")
    scipy.io.savemat(
        base / "cuhk03_new_protocol_config_labeled.mat", {"labels": np.arange(8), "filelist": _cell(files)}
    )
    with pytest.raises(UserError, match=r"has no field 'train_idx'"):
        read_cuhk03(base, labeled=True)
    (base / "cuhk03_new_protocol_config_labeled.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"cannot read .*cuhk03_new_protocol_config_labeled\.mat"):
        read_cuhk03(base, labeled=True)


def test_readers_registry() -> None:
    """The built-in reader names (one table, in autoprune_plugins.datasets) call these functions."""
    from autoprune.data import readers
    from autoprune_plugins import datasets as builtin

    registered = {
        name: getattr(readers, builtin._lazy(f"read_{name}", doc).__name__)
        for name, doc in builtin.BUILTIN_READERS.items()
    }
    assert registered == {
        "market1501": read_market1501,
        "dukemtmc": read_dukemtmc,
        "msmt17": read_msmt17,
        "cuhk03": read_cuhk03,
        "folder": read_folder,
    }


def test_check_images_names_the_corrupt_file(tmp_path: Path) -> None:
    good = tmp_path / "1_c1_good.jpg"
    _jpg(good)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "big.jpg", quality=95)
    truncated = tmp_path / "1_c2_truncated.jpg"
    truncated.write_bytes((tmp_path / "big.jpg").read_bytes()[:300])
    text = tmp_path / "1_c3_text.jpg"
    text.write_text("hello")
    samples = [(str(good), 1, 0), (str(truncated), 1, 1), (str(text), 1, 2)]
    assert check_images(samples[:1]) == 1
    assert check_images(samples, limit=1) == 1
    with pytest.raises(UserError, match=r"image .*1_c2_truncated\.jpg cannot be read"):
        check_images(samples)
    with pytest.raises(UserError, match=r"image .*1_c3_text\.jpg cannot be read \(cannot identify image file"):
        check_images(samples[2:])
    with pytest.raises(UserError, match=r"missing\.jpg cannot be read"):
        check_images([(str(tmp_path / "missing.jpg"), 1, 0)])


def test_messages_are_one_line(tmp_path: Path) -> None:
    for call in (lambda: read_market1501(tmp_path / "x"), lambda: read_folder(_tree(tmp_path, {"train": []}))):
        with pytest.raises(UserError) as err:
            call()
        assert "\n" not in str(err.value)


def test_validation_split_one_query_per_camera_each_with_a_match() -> None:
    from autoprune.data.domain import split_validation

    # pid 1: 3 cameras x 2 images; pid 2: 2 cameras x 1 image (only one of its firsts can be a query);
    # pid 3: single camera, so never held out.
    train = (
        [(f"1_{c}_{i}.jpg", 1, c) for c in range(3) for i in range(2)]
        + [(f"2_{c}.jpg", 2, c) for c in range(2)]
        + [(f"3_{i}.jpg", 3, 0) for i in range(3)]
    )
    new_train, query, gallery = split_validation(train, fraction=0.67, seed=0)
    assert {q[1] for q in query} == {1, 2}
    assert sorted(q[0] for q in query if q[1] == 1) == ["1_0_0.jpg", "1_1_0.jpg", "1_2_0.jpg"]
    assert [q[0] for q in query if q[1] == 2] == ["2_1.jpg"]
    assert not set(query) & set(gallery)
    for q in query:  # every query has a gallery image of its identity from another camera
        assert any(g[1] == q[1] and g[2] != q[2] for g in gallery)
    assert len(query) + len(gallery) == 8 and [s[1] for s in new_train] == [0, 0, 0]


class TestMarket1501ReaderContract(DatasetReaderContract):
    reader = staticmethod(read_market1501)


class TestFolderReaderContract(DatasetReaderContract):
    reader = staticmethod(read_folder)

    def write_sample(self, root: Path) -> None:
        """The folder layout: ROOT/{train,query,gallery} with <pid>_c<cam>_<anything>.jpg names."""
        for split, names in (
            ("train", ["0001_c1_a", "0001_c2_b", "0002_c1_a", "0002_c2_b"]),
            ("query", ["0003_c1_a"]),
            ("gallery", ["0003_c2_a", "0004_c2_a"]),
        ):
            (root / split).mkdir(parents=True)
            for name in names:
                Image.new("RGB", (16, 32), (10, 20, 30)).save(root / split / f"{name}.jpg")
