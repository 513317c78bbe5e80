"""benchmarks/recovery.py's tables: each pruned figure is paired with its reference on the seeds that have both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import recovery


def _cell(folder: Path, name: str, rank1: float, macs: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"rank1": rank1, "macs": macs, "target_epochs": 12}))


def test_table4_pairs_the_pruned_larger_network_with_the_smaller_one_on_common_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "ROOT", tmp_path)
    monkeypatch.setattr(recovery, "smaller_macs", lambda: 100)
    large = tmp_path / "cache" / "recovery-large"
    _cell(large / "s0-resnet34", "ftp_embedding", 0.60, 99)
    _cell(large / "s0", "unpruned_adapted", 0.50)
    _cell(large / "s1-resnet34", "ftp_embedding", 0.70, 98)
    _cell(large / "s1", "unpruned_adapted", 0.40)
    _cell(large / "s2-resnet34", "ftp_embedding", 0.99, 97)  # no smaller reference for seed 2: left out

    row = recovery.table4_row("large", [0, 1, 2])

    assert row is not None
    assert row["seeds"] == [0, 1]
    assert row["larger_pruned_rank1"] == pytest.approx(0.65)
    assert row["smaller_rank1"] == pytest.approx(0.45)
    assert row["per_seed"][1] == (0.70, 98, 0.40, 100)
    assert recovery.table4_row("small", [0, 1, 2]) is None


def test_table1_rows_average_only_seeds_with_both_the_pruned_model_and_its_reference() -> None:
    cells = {
        "ftp_embedding": {0: {"rank1": 0.4, "target_epochs": 12}, 1: {"rank1": 0.6, "target_epochs": 12}},
        "unpruned_adapted": {1: {"rank1": 0.7, "target_epochs": 12}},
    }

    (row,) = recovery.table1_rows(cells, "large")

    assert (row["seeds"], row["pruned_rank1"], row["unpruned_rank1"]) == ([1], 0.6, 0.7)
    assert row["condition"] == "large" and row["target_epochs"] == 12


def test_recovery_epoch_variants_pair_with_the_reference_of_the_same_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "ROOT", tmp_path)
    s0 = tmp_path / "cache" / "recovery-large" / "s0"
    for name, rank1, epochs in (
        ("ftp_embedding", 0.80, 12),
        ("unpruned_adapted", 0.85, 12),
        ("ftp_embedding-e16", 0.84, 20),
        ("unpruned_adapted-e16", 0.86, 20),
        ("ftp_embedding-e32", 0.9, 36),  # its reference not run yet: no row
    ):
        s0.mkdir(parents=True, exist_ok=True)
        (s0 / f"{name}.json").write_text(
            json.dumps({"rank1": rank1, "val_rank1": rank1 + 0.1, "target_epochs": epochs})
        )

    rows = recovery.epochs_rows("large", [0, 1])

    assert [(r["recovery_epochs"], r["pruned_rank1"], r["unpruned_rank1"]) for r in rows] == [
        (8, 0.80, 0.85),
        (16, 0.84, 0.86),
    ]


def test_precision_rows_pair_each_cell_of_a_seed_in_float32_and_bfloat16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "ROOT", tmp_path)
    large = tmp_path / "cache" / "recovery-large"
    for folder, rank1 in (("s0", 0.80), ("s0-bf16", 0.79), ("s1", 0.7)):  # seed 1 has no bfloat16 run: no row
        (large / folder).mkdir(parents=True)
        (large / folder / "ftp_embedding.json").write_text(json.dumps({"rank1": rank1, "mAP": 0.5, "seconds": 10}))

    (row,) = recovery.precision_rows("large", [0, 1])

    assert (row["seed"], row["cell"], row["rank1_fp32"], row["rank1_bf16"]) == (0, "ftp_embedding", 0.80, 0.79)
