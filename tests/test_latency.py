"""Latency tables and latency budgets: the logic on a fake clock, one real profile on a tiny model."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from torch import nn

from autoprune.cli import main
from autoprune.config import DEFAULT_LATENCY_MARGIN
from autoprune.errors import UserError
from autoprune.models import build_model
from autoprune.pruning.budget import Budget, check_feasible, project
from autoprune.pruning.flops import CostModel
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.latency import (
    EndToEnd,
    LatencyModel,
    LatencyTable,
    check_table,
    make_key,
    monotone,
    profile,
    skeleton,
    uniform_widths,
    width_choices,
)

SIZE = (32, 16)


def fake_seconds(module: nn.Module, shape: tuple[int, ...]) -> float:
    """A deterministic clock: 1 us per leaf module called, 1 ns per conv multiply-add, 0.1 ns per input element
    of any module (so pooling and ReLUs cost in proportion to their channels, as on a device)."""
    calls = [0]
    macs = [0.0]

    def hook(mod, inp, out):
        calls[0] += 1
        macs[0] += 0.1 * inp[0].numel()
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs[0] += out.numel() * mod.in_channels // mod.groups * k

    hooks = [m.register_forward_hook(hook) for m in module.modules() if len(list(m.children())) == 0]
    with torch.no_grad():
        module.eval()(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return 1e-6 * calls[0] + 1e-9 * macs[0]


def fake_measure(module: nn.Module, shape: tuple[int, ...]) -> list[float]:
    return [fake_seconds(module, shape)] * 3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("resnet10", 2).eval()
    key = make_key("resnet10", SIZE, 1, threads=1, round_to=4)
    table = profile(model, key, fake_measure, points=3, progress=False, calibration_keep=(1.0, 0.5))
    graph = PruningGraph(model, SIZE)
    return model, key, table, graph


def _random_widths(graph: PruningGraph, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    return {n: rng.choice(width_choices(b, 4, 0.1)) for n, b in graph.widths().items()}


def test_table_predicts_the_fake_clock_exactly(tiny):
    # conv time is bilinear in (in, out) widths and the rest is a constant: interpolation plus the fitted
    # offset must reproduce the clock for widths never profiled, so a wrong layer->group mapping fails here
    model, key, table, graph = tiny
    lat = LatencyModel(table, graph)
    assert table.scale == pytest.approx(1.0)
    for seed in range(5):
        widths = _random_widths(graph, seed)
        measured = 1000 * fake_seconds(skeleton(model, SIZE, widths), (1, 3, *SIZE))
        assert lat.predict_ms(widths) == pytest.approx(measured, rel=1e-6)
    assert lat.predict_ms(graph.widths()) > lat.predict_ms(uniform_widths(graph.widths(), 0.5, 4, 0.1))


def test_grid_is_the_projections_widths(tiny):
    _, _, table, graph = tiny
    choices = width_choices(64, 4, 0.1)
    assert choices[0] == 8 and choices[-1] == 64 and all(c % 4 == 0 for c in choices)
    layer = table.layers["backbone.layer1.0.conv1"]
    kind = table.kinds[layer["kind"]]
    assert kind.cin[0] == 8 and kind.cin[-1] == 64 and len(kind.cin) == 3


def test_projection_meets_latency_and_macs(tiny):
    _, _, table, graph = tiny
    lat = LatencyModel(table, graph)
    cost = CostModel(graph)
    full = lat.predict_ms(cost.base_widths)
    for share, macs_ratio in ((0.6, 1.0), (0.6, 0.3), (0.4, 1.0)):
        b = Budget(int(macs_ratio * cost.base_macs), 0.1, 1.0, 4, latency_ms=share * full, latency=lat)
        for seed in range(3):
            rng = random.Random(seed)
            counts = project(cost, {n: rng.uniform(0.2, 1.0) for n in cost.base_widths}, b)
            assert lat.predict_ms(counts) <= b.latency_ms
            assert cost.macs(counts) <= b.macs
            # tight: no group can take one more rounding step without breaking a limit
            grow = [n for n, c in counts.items() if c < cost.base_widths[n] and b.fits(cost, {**counts, n: c + 4})]
            assert grow == []


def test_budget_below_the_smallest_model_is_refused(tiny):
    _, _, table, graph = tiny
    lat = LatencyModel(table, graph)
    cost = CostModel(graph)
    floor = lat.predict_ms({n: width_choices(b, 4, 0.1)[0] for n, b in cost.base_widths.items()})
    with pytest.raises(UserError, match="below the smallest model's latency"):
        check_feasible(cost, Budget(cost.base_macs, 0.1, 1.0, 4, latency_ms=0.9 * floor, latency=lat))
    check_feasible(cost, Budget(cost.base_macs, 0.1, 1.0, 4, latency_ms=1.01 * floor, latency=lat))
    # a budget just over the floor, less a 5% margin, is under it: the message names the margin to lower
    with pytest.raises(UserError, match=r"budget.latency_ms=.* less its 5% budget.latency_margin .* or budget.lat"):
        check_feasible(cost, Budget(cost.base_macs, 0.1, 1.0, 4, 1.01 * floor * 0.95, 0.05, latency=lat))


def test_end_to_end_check_tightens_until_measured_under(tiny):
    # the device turns out 30% slower than the table says: the projection must tighten until it measures under
    model, _, table, graph = tiny
    lat = LatencyModel(table, graph)
    cost = CostModel(graph)

    def slow(m, shape):
        return [1.3 * t for t in fake_measure(m, shape)]

    checker = EndToEnd(lat, model, slow, rounds=4)
    limit = 0.6 * lat.predict_ms(cost.base_widths)
    b = Budget(cost.base_macs, 0.1, 1.0, 4, latency_ms=limit, latency=lat)
    ratios = dict.fromkeys(cost.base_widths, 1.0)
    first = project(cost, ratios, b)
    assert checker.time_widths(first)["median_ms"] > limit
    counts = checker.tighten(first, lambda ms: project(cost, ratios, replace(b, latency_ms=ms)), limit)
    assert checker.time_widths(counts)["median_ms"] <= limit
    assert cost.macs(counts) < cost.macs(first)
    # an honest device is left alone
    honest = EndToEnd(lat, model, fake_measure)
    assert honest.tighten(first, lambda ms: pytest.fail("tightened a model already under"), limit) == first


def test_end_to_end_check_confirms_an_overshoot_before_tightening(tiny):
    # one burst of other work during a policy's first timing is not its time: timed again, it is under and kept
    model, _, table, graph = tiny
    lat = LatencyModel(table, graph)
    cost = CostModel(graph)
    calls = []

    def burst(m, shape):
        calls.append(1)
        return [(3.0 if len(calls) == 1 else 1.0) * t for t in fake_measure(m, shape)]

    limit = 0.6 * lat.predict_ms(cost.base_widths)
    b = Budget(cost.base_macs, 0.1, 1.0, 4, latency_ms=limit, latency=lat)
    first = project(cost, dict.fromkeys(cost.base_widths, 1.0), b)
    checker = EndToEnd(lat, model, burst)
    assert checker.tighten(first, lambda ms: pytest.fail("tightened on a burst"), limit) == first
    assert len(calls) == 2 and checker.time_widths(first)["q3_ms"] <= limit


def test_end_to_end_check_keeps_the_spread_as_a_margin(tiny):
    # a policy whose median is under the limit but whose slower quarter of runs is over is tightened: accepted
    # at its median, it would measure over the budget in about half of later timings
    model, _, table, graph = tiny
    lat = LatencyModel(table, graph)
    cost = CostModel(graph)

    def noisy(m, shape):
        t = fake_seconds(m, shape)
        return [0.9 * t, 0.95 * t, t, 1.05 * t, 1.1 * t]  # median t, upper quartile 1.05 t

    limit = 0.6 * lat.predict_ms(cost.base_widths)
    b = Budget(cost.base_macs, 0.1, 1.0, 4, latency_ms=limit, latency=lat)
    ratios = dict.fromkeys(cost.base_widths, 1.0)
    first = project(cost, ratios, b)
    checker = EndToEnd(lat, model, noisy)
    timed = checker.time_widths(first)
    assert timed["median_ms"] <= limit < timed["q3_ms"]
    counts = checker.tighten(first, lambda ms: project(cost, ratios, replace(b, latency_ms=ms)), limit)
    assert checker.time_widths(counts)["q3_ms"] <= limit and cost.macs(counts) < cost.macs(first)


def test_table_round_trip_and_monotone(tiny, tmp_path):
    _, key, table, graph = tiny
    table.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.key == key and back.kinds == table.kinds and back.scale == table.scale
    assert monotone([[1.0, 0.5], [0.8, 2.0]]) == [[1.0, 1.0], [1.0, 2.0]]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: "not json {",
        lambda d: json.dumps({**d, "format": "something-else"}),
        lambda d: json.dumps({**d, "kinds": [{**d["kinds"][0], "ms": d["kinds"][0]["ms"][:-1]}] + d["kinds"][1:]}),
        lambda d: json.dumps(
            {**d, "kinds": [{**d["kinds"][0], "ms": [[-1.0] * len(r) for r in d["kinds"][0]["ms"]]}] + d["kinds"][1:]}
        ),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "layers"}),
        lambda d: json.dumps({**d, "layers": {"x": {"kind": 999, "cin": 1, "cout": 1}}}),
        # wrong types: a time as text, a width as text or a fraction, a boolean batch, a list for the key
        lambda d: json.dumps(
            {**d, "kinds": [{**d["kinds"][0], "ms": [["fast"] * len(r) for r in d["kinds"][0]["ms"]]}] + d["kinds"][1:]}
        ),
        lambda d: json.dumps(
            {**d, "kinds": [{**d["kinds"][0], "cin": [str(c) for c in d["kinds"][0]["cin"]]}] + d["kinds"][1:]}
        ),
        lambda d: json.dumps(
            {**d, "kinds": [{**d["kinds"][0], "cout": [c + 0.5 for c in d["kinds"][0]["cout"]]}] + d["kinds"][1:]}
        ),
        lambda d: json.dumps({**d, "key": {**d["key"], "batch": True}}),
        lambda d: json.dumps({**d, "key": [1, 2]}),
        lambda d: json.dumps([d]),
        # absurd sizes: a billion channels, a zero-pixel input, a grid of 5000 points
        lambda d: json.dumps(
            {**d, "kinds": [{**d["kinds"][0], "cin": [10**9] * len(d["kinds"][0]["cin"])}] + d["kinds"][1:]}
        ),
        lambda d: json.dumps({**d, "key": {**d["key"], "input_size": [0, 16]}}),
        lambda d: json.dumps({**d, "key": {**d["key"], "input_size": [32, 16, 3]}}),
        lambda d: json.dumps({**d, "kinds": [{"cin": list(range(1, 5001)), "cout": [8], "ms": [[1.0]] * 5000}]}),
        # NaN and infinite times (Python's json writes and reads them), a NaN calibration
        lambda d: json.dumps(
            {
                **d,
                "kinds": [{**d["kinds"][0], "ms": [[float("nan")] * len(r) for r in d["kinds"][0]["ms"]]}]
                + d["kinds"][1:],
            }
        ),
        lambda d: json.dumps(
            {
                **d,
                "kinds": [{**d["kinds"][0], "ms": [[float("inf")] * len(r) for r in d["kinds"][0]["ms"]]}]
                + d["kinds"][1:],
            }
        ),
        lambda d: json.dumps({**d, "scale": float("nan")}),
        # hostile: integers too large for a float (OverflowError), JSON nested too deep (RecursionError)
        lambda d: json.dumps({**d, "scale": 10**400}),
        lambda d: json.dumps({**d, "key": {**d["key"], "min_keep": 10**400}}),
        lambda d: json.dumps(
            {
                **d,
                "kinds": [{**d["kinds"][0], "ms": [[10**400] * len(r) for r in d["kinds"][0]["ms"]]}] + d["kinds"][1:],
            }
        ),
        lambda d: "[" * 100_000 + "]" * 100_000,
        lambda d: json.dumps(d)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_corrupt_table_is_one_user_error(tiny, tmp_path, corrupt):
    _, _, table, _ = tiny
    path = tmp_path / "bad.json"
    path.write_text(corrupt(table.to_json()))
    with pytest.raises(UserError, match="is corrupt") as exc:
        LatencyTable.load(path)
    assert "\n" not in str(exc.value)


def test_a_table_from_another_device_is_used_but_nothing_is_timed_here(tiny, tmp_path):
    # profile on the device, search anywhere: a table of another device is accepted, its predictions are
    # trusted, and the end-to-end check (timing policies, tightening) runs only where the table's device is
    from autoprune.config import load_config
    from autoprune.pruning.latency import device_name, latency_budget, same_device

    model, key, table, graph = tiny
    cost = CostModel(graph)
    limit = 0.7 * LatencyModel(table, graph).predict_ms(cost.base_widths)
    assert same_device(replace(key, device=device_name("cpu")))
    assert not same_device(replace(key, device="cpu: Some Camera Box SoC"))
    if not torch.cuda.is_available():
        assert not same_device(replace(key, device="cuda: NVIDIA Jetson Orin"))
    for device, checked in ((device_name("cpu"), True), ("cpu: Some Camera Box SoC", False)):
        path = tmp_path / f"{checked}.json"
        replace(table, key=replace(key, device=device)).save(path)
        cfg = load_config(
            preset="smoke",
            overrides=[
                f"budget.latency_table={path}",
                f"budget.latency_ms={limit}",
                "budget.round_to=4",
                "model.input_size=[32,16]",
            ],
        )
        budget, checker = latency_budget(cfg, graph, Budget(cost.base_macs, 0.1, 1.0, 4), log=lambda _: None)
        # policies aim under the budget by the default margin; the budget itself is reported as given
        assert budget.latency_ms == pytest.approx(limit * (1 - DEFAULT_LATENCY_MARGIN))
        assert budget.user_latency_ms == pytest.approx(limit) and budget.latency.table.key.device == device
        assert (checker is not None) is checked
    cfg["budget"]["latency_margin"] = 0.0  # a quiet, dedicated device: policies may reach the budget itself
    assert latency_budget(cfg, graph, Budget(cost.base_macs, 0.1, 1.0, 4), log=lambda _: None)[0].latency_ms == limit


def test_table_for_other_arch_input_or_batch_is_refused(tiny):
    _, key, table, graph = tiny
    check_table(table, key, "t.json")
    for change, words in (
        ({"arch": "resnet18"}, "architecture resnet10"),
        ({"input_size": (128, 64)}, "input size 32x16"),
        ({"batch": 8}, "batch size 1"),
        ({"min_keep": 0.05}, "min_keep"),
    ):
        with pytest.raises(UserError, match=words):
            check_table(table, replace(key, **change), "t.json")
    other = PruningGraph(build_model("resnet18", 2), SIZE)
    with pytest.raises(UserError, match="another architecture"):
        LatencyModel(table, other)


def _search_args(tmp_path, *sets: str) -> list[str]:
    return [
        "search",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        f"data.root={tmp_path / 'data'}",
        *[a for s in sets for a in ("--set", s)],
    ]


def test_search_refuses_bad_tables_with_exit_2(tiny, tmp_path, capsys):
    _, key, table, _ = tiny
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{")
    other = tmp_path / "other.json"
    replace(table, key=replace(key, arch="resnet18")).save(other)
    small = tmp_path / "small.json"
    replace(table, key=replace(key, round_to=4)).save(small)
    wrong_size = tmp_path / "size.json"
    replace(table, key=replace(key, input_size=(64, 32))).save(wrong_size)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({**table.to_json(), "scale": 10**400}))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cases = [
        (corrupt, "1", "is corrupt"),
        (huge, "5", f"latency table {huge} is corrupt"),
        (deep, "5", f"latency table {deep} is corrupt"),
        (other, "1", "architecture resnet18"),
        (wrong_size, "1", "input size 64x32"),
        (tmp_path / "missing.json", "1", "does not exist"),
        (small, "0.0001", "below the smallest model"),
    ]
    for path, ms, words in cases:
        code = main(
            _search_args(
                tmp_path,
                f"budget.latency_table={path}",
                f"budget.latency_ms={ms}",
                "budget.round_to=4",
                "model.input_size=[32,16]",
            )
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and words in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_search_with_another_devices_table_reports_predictions(tiny, tmp_path, capsys):
    # a table from a camera box, the search here: every trial's predicted latency in report.json and trials.csv
    # next to its MACs, and the report says the best model's latency is the table's prediction, not timed here
    import csv

    _, key, table, graph = tiny
    box = tmp_path / "box.json"
    replace(table, key=replace(key, device="cpu: Some Camera Box SoC")).save(box)
    lat = LatencyModel(table, graph)
    limit = round(0.7 * lat.predict_ms(graph.widths()), 4)
    assert (
        main(
            _search_args(
                tmp_path,
                f"budget.latency_table={box}",
                f"budget.latency_ms={limit}",
                "budget.round_to=4",
                "model.input_size=[32,16]",
                "search.n_trials=2",
                "train.epochs=1",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["budget"]["latency_timed_here"] is False
    assert report["budget"]["latency_device"] == "cpu: Some Camera Box SoC"
    for entry in (report["best"], report["baseline"]):
        assert entry["latency_measured"] is False and entry["latency_spread_ms"] is None
        assert (
            entry["latency_ms"]
            == entry["latency_predicted_ms"]
            == pytest.approx(lat.predict_ms({**graph.widths(), **entry.get("counts", {})}), abs=1e-3)
        )
    assert "nothing was timed here" in out and "not this machine: the table is trusted" in out
    rows = list(csv.DictReader((tmp_path / "run" / "trials.csv").open()))
    trials = {t["number"]: t for t in report["trials"]}
    assert len(rows) == len(trials) == 2
    header = list(rows[0])
    assert header.index("latency_ms") == header.index("macs_ratio") + 1
    for row in rows:
        t = trials[int(row["number"])]
        assert t["state"] == "COMPLETE" and t["latency_ms"] == pytest.approx(lat.predict_ms(t["counts"]), abs=1e-3)
        assert float(row["latency_ms"]) == t["latency_ms"] <= limit


def test_trials_csv_has_latency_only_under_a_latency_budget(tmp_path):
    from autoprune.search.records import TrialRecord
    from autoprune.search.report import write_trials_csv

    records = [
        TrialRecord(0, "COMPLETE", {"g": 0.5}, {"g": 8}, 100, 10, 0.5, latency_ms=1.25),
        TrialRecord(1, "FAIL", error="ValueError: x"),
    ]
    write_trials_csv(tmp_path / "a.csv", records, latency=True)
    write_trials_csv(tmp_path / "b.csv", records)
    with_lat = (tmp_path / "a.csv").read_text().splitlines()
    assert with_lat[0].startswith("number,state,macs,macs_ratio,latency_ms,params,")
    assert with_lat[1].startswith("0,COMPLETE,100,0.5,1.25,10,") and with_lat[2].startswith("1,FAIL,,,,,")
    assert "latency_ms" not in (tmp_path / "b.csv").read_text()


def test_config_latency_keys(tmp_path):
    from autoprune.config import load_config

    cfg = load_config(preset="smoke")
    assert cfg["budget"]["macs_ratio"] == 0.5 and cfg["budget"]["latency_ms"] is None
    cfg = load_config(preset="smoke", overrides=["budget.latency_ms=12"])
    assert cfg["budget"]["macs_ratio"] is None and cfg["budget"]["latency_batch"] == 1
    both = load_config(preset="smoke", overrides=["budget.latency_ms=12", "budget.macs_ratio=0.3"])
    assert both["budget"]["macs_ratio"] == 0.3
    for bad, words in (
        ("budget.latency_ms=0", "must be > 0"),
        ("budget.latency_batch=0", r"must be in \[1, 256\], got 0"),
        ("budget.latency_ms=fast", "must be float"),
        ("budget.latency_margin=0.5", r"'budget.latency_margin' must be in \[0.0, 0.5\), got 0.5"),
        ("budget.latency_margin=-0.01", r"must be in \[0.0, 0.5\)"),
    ):
        with pytest.raises(UserError, match=words):
            load_config(preset="smoke", overrides=[bad])
    with pytest.raises(UserError, match="budget.latency_ms is not"):
        load_config(preset="smoke", overrides=[f"budget.latency_table={tmp_path / 't.json'}"])


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--input-size", "100000", "100000"], "--input-size must be two integers in [16, 2048] (as model.input_size)"),
        (["--input-size", "8", "16"], "--input-size must be two integers in [16, 2048]"),
        (["--batch", "100000000"], "--batch must be in [1, 256], got 100000000"),
        (["--batch", "0"], "--batch must be in [1, 256], got 0"),
        (["--last-stride", "3"], "--last-stride is 3; choose one of: 1, 2"),
        (["--out", "{tmp}"], "--out {tmp} is a folder; give a file path"),
        (["--out", "/proc/x.json"], "--out /proc/x.json: the folder /proc is not a writable folder"),
        (["--out", "{tmp}/file/x.json"], "--out {tmp}/file/x.json: the folder {tmp}/file is not a writable folder"),
    ],
)
def test_profile_arguments_are_checked_before_any_work(tmp_path, capsys, monkeypatch, extra, fragment):
    """Sizes that would allocate gigabytes, a last stride the models lack, an --out that cannot be written: exit 2
    before a model is built or timed (the profile of a ResNet-50 takes minutes)."""
    import autoprune.models
    import autoprune.pruning.latency

    def never(*args, **kwargs):
        raise AssertionError("the profile started")

    monkeypatch.setattr(autoprune.pruning.latency, "profile", never)
    monkeypatch.setattr(autoprune.models, "build_model", never)
    (tmp_path / "file").write_text("")
    args = ["latency", "profile", "--arch", "resnet10", "--input-size", "32", "16", "--out", str(tmp_path / "t.json")]
    assert main(args + [a.format(tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment.format(tmp=tmp_path) in err, err


def test_profile_command_real_clock(tmp_path, capsys):
    # real timing, tiny: the table is written with this machine's key, then reused rather than profiled again
    out = tmp_path / "lut.json"
    args = [
        "latency",
        "profile",
        "--arch",
        "resnet10",
        "--input-size",
        "32",
        "16",
        "--out",
        str(out),
        "--threads",
        "1",
        "--points",
        "2",
        "--repeats",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    table = LatencyTable.load(out)
    assert table.key.arch == "resnet10" and table.key.input_size == (32, 16) and table.key.threads == 1
    assert table.key.runtime == "torch" and table.key.device.startswith("cpu")
    assert all(v > 0 for k in table.kinds for r in k.ms for v in r)
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 0
    assert "already holds this table" in capsys.readouterr().out
    assert main(args[:-1] + ["--min-keep", "0"]) == 2
    assert "--min-keep" in capsys.readouterr().err


@pytest.mark.slow
def test_search_under_a_latency_budget(tmp_path, capsys):
    # real timing end to end: profile this machine (CPU time: CI machines are shared), search the smoke preset
    # under a latency budget, and find the budget in the policies, the report and the summary
    lut = tmp_path / "lut.json"
    assert (
        main(
            [
                "latency",
                "profile",
                "--arch",
                "resnet10",
                "--input-size",
                "32",
                "16",
                "--out",
                str(lut),
                "--threads",
                "1",
                "--points",
                "2",
                "--repeats",
                "3",
                "--round-to",
                "4",
                "--clock",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    table = LatencyTable.load(lut)
    graph = PruningGraph(build_model("resnet10", 2), (32, 16))
    lat = LatencyModel(table, graph)
    floor = lat.predict_ms({n: width_choices(b, 4, 0.1)[0] for n, b in graph.widths().items()})
    limit = round((floor + lat.predict_ms(graph.widths())) / 2, 4)  # halfway between the smallest and the whole
    capsys.readouterr()
    assert (
        main(
            _search_args(
                tmp_path,
                f"budget.latency_table={lut}",
                f"budget.latency_ms={limit}",
                "model.input_size=[32,16]",
                "search.n_trials=2",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    budget, best, base = report["budget"], report["best"], report["baseline"]
    assert budget["latency_ms"] == limit and budget["latency_batch"] == 1 and budget["latency_table"] == str(lut)
    assert budget["latency_margin"] == DEFAULT_LATENCY_MARGIN
    assert budget["latency_target_ms"] == pytest.approx(limit * (1 - DEFAULT_LATENCY_MARGIN), abs=1e-4)
    assert budget["macs_ratio"] == 1.0  # latency only: MACs not limited
    assert best["latency_predicted_ms"] <= budget["latency_target_ms"] < limit < base["latency_predicted_ms"]
    assert lat.predict_ms(best["counts"]) == pytest.approx(best["latency_predicted_ms"], abs=1e-3)
    for entry in (best, base):
        assert entry["latency_measured"] is True and entry["latency_runs"] == 50
        q1, q3 = entry["latency_spread_ms"]
        assert 0 < q1 <= entry["latency_ms"] <= q3
    assert budget["latency_timed_here"] is True and "timed here" in out
    for t in report["trials"]:
        if t["state"] == "COMPLETE":
            assert t["latency_ms"] == pytest.approx(lat.predict_ms(t["counts"]), abs=1e-3)
            assert lat.predict_ms(t["counts"]) <= limit + 1e-9
    assert "latency (ms)" in out and f"budget {limit} ms" in out
