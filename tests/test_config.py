from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.config import DEFAULTS, load_config
from autoprune.errors import UserError


def test_defaults_and_demo_preset():
    cfg = load_config()
    assert cfg["model"]["arch"] == "resnet18"
    assert cfg["budget"]["macs_ratio"] == 0.5
    assert cfg["search"]["backend"] == "optuna"


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("search: {n_trials: 7}\nbudget: {macs_ratio: 0.3}\n")
    cfg = load_config(f, preset="smoke", overrides=["search.n_trials=2", "model.input_size=[96, 48]"])
    assert cfg["model"]["arch"] == "resnet10"  # preset
    assert cfg["budget"]["macs_ratio"] == 0.3  # file over preset
    assert cfg["search"]["n_trials"] == 2  # --set over file
    assert cfg["model"]["input_size"] == [96, 48]


def test_int_accepted_for_float_and_null_for_optional():
    cfg = load_config(preset="smoke", overrides=["train.lr=1", "budget.gmacs=null", "search.storage=null"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("search.n_trails=3", "unknown config key 'search.n_trails' (did you mean 'search.n_trials'?)"),
        ("budget.macs_ratio=0", "'budget.macs_ratio' must be in (0.0, 1.0], got 0"),
        ("budget.macs_ratio=1.5", "must be in (0.0, 1.0], got 1.5"),
        ("budget.macs_ratio=-0.2", "must be in (0.0, 1.0], got -0.2"),
        ("budget.macs_ratio=half", "'budget.macs_ratio' must be float or null, got str 'half'"),
        ("search.n_trials=0", "'search.n_trials' must be > 0"),
        ("search.sampler=tpee", "(did you mean 'tpe'?)"),
        ("model.input_size=[128]", "model.input_size must be [height, width]"),
        ("search=3", "'search' is a section"),
        ("nokey", "must look like dotted.key=value"),
        ("data.source=market", "data.source must look like KIND:ROOT"),
        ("data.batch_size=30", "must be a multiple of data.num_instances"),
        ("budget.min_keep=0.9", None),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    if fragment is None:  # min_keep 0.9 > max_keep 1.0 is fine; min above max is not
        load_config(overrides=[override])
        with pytest.raises(UserError, match="budget.min_keep .* is above budget.max_keep"):
            load_config(overrides=[override, "budget.max_keep=0.5"])
        return
    with pytest.raises(UserError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


def test_malformed_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  arch: resnet18\n   last_stride: 1\n")
    with pytest.raises(UserError, match=r"not valid YAML at line 3"):
        load_config(f)


def test_unknown_section_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trial: {critrion: l2}\n")
    with pytest.raises(UserError, match=r"unknown config key 'trial.critrion' \(did you mean 'trial.criterion'\?\)"):
        load_config(f)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'smok' \\(did you mean 'smoke'\\?\\)"):
        load_config(preset="smok")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
        max_leaves=8,
    )
)
def test_fuzzed_config_files_give_user_errors_only(tmp_path_factory, data):
    """Whatever YAML a user writes, loading either works or raises a UserError: never a traceback."""
    f = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    try:
        load_config(f)
    except UserError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted({f"{s}.{k}" for s, v in DEFAULTS.items() if isinstance(v, dict) for k in v})),
    st.text(max_size=12),
)
def test_fuzzed_overrides_give_user_errors_only(key, raw):
    try:
        load_config(preset="smoke", overrides=[f"{key}={raw}"])
    except UserError:
        pass


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.precision=fp16", "choose one of: auto, bf16, fp32"),
        ("search.objective=rank5", "choose one of: rank1, mAP, mix"),
        ("search.pruner=asha", "successive_halving"),
        ("search.reduction_factor=1", "search.reduction_factor must be an integer >= 2"),
        ("search.min_resource=0", "search.min_resource must be an integer >= 1"),
        ("search.finalists_se=-1", "search.finalists_se"),
        ("data.synth.target_num_test_ids=0", "data.synth.target_num_test_ids"),
    ],
)
def test_new_search_and_precision_keys_are_validated(override, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=[override])


def test_target_only_synth_sizes_leave_the_source_alone():
    from autoprune.data.domain import source_synth, target_synth

    cfg = load_config(overrides=["data.synth.target_num_test_ids=1500"])
    synth = cfg["data"]["synth"]
    assert target_synth(synth)["num_test_ids"] == 1500 and target_synth(synth)["num_train_ids"] == 100
    assert source_synth(synth)["num_test_ids"] == 100 and "target_num_test_ids" not in source_synth(synth)


def test_search_settings_are_the_search_section_typed_and_frozen():
    """SearchSettings has a field for every key of the search section (nested ones too), and is frozen."""
    import dataclasses

    from autoprune.config import SearchSettings

    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    s = SearchSettings.from_config(
        load_config(preset="smoke", overrides=["search.n_trials=7", "search.ray.max_concurrent=3"])
    )
    assert fields(SearchSettings) == set(DEFAULTS["search"])
    assert fields(type(s.screening)) == set(DEFAULTS["search"]["screening"])
    assert fields(type(s.ray)) == set(DEFAULTS["search"]["ray"])
    assert (s.n_trials, s.ray.max_concurrent, s.multi_objective) == (7, 3, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_trials = 8  # type: ignore[misc]
    multi = SearchSettings.from_config(load_config(preset="smoke", overrides=["search.objectives=rank1+macs"]))
    assert multi.multi_objective


def test_choice_lists_are_kept_once_and_every_choice_is_acted_on():
    """config validates against autoprune.choices, and the code that acts on each choice knows every name."""
    from autoprune import choices
    from autoprune.config import CHOICES
    from autoprune.search.backend import make_sampler
    from autoprune.search.optuna_backend import make_pruner

    assert CHOICES["search.sampler"] is choices.SAMPLERS and CHOICES["search.pruner"] is choices.PRUNERS
    assert CHOICES["train.precision"] is choices.PRECISIONS and CHOICES["model.pooling"] is choices.POOLINGS
    assert CHOICES["search.objective"] is choices.OBJECTIVES
    for name in choices.SAMPLERS:
        try:
            make_sampler(name, 0, multi=False)
        except UserError as exc:  # an optional package missing is fine; an unknown name is not
            assert "unknown" not in str(exc)
    assert {type(make_pruner(name, multi=False)).__name__ for name in choices.PRUNERS} == {
        "MedianPruner",
        "HyperbandPruner",
        "SuccessiveHalvingPruner",
        "NopPruner",
    }


def test_trial_settings_are_the_trial_section_typed_and_frozen():
    import dataclasses

    from autoprune.config import TrialSettings

    t = TrialSettings.from_config(load_config(preset="smoke", overrides=["trial.criterion=l2", "trial.lr=0.01"]))
    assert {f.name for f in dataclasses.fields(TrialSettings)} == set(DEFAULTS["trial"])
    assert (t.plugin("criterion"), t.plugin("strategy"), t.lr) == ("l2", "one_shot", 0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.lr = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.distill["logit"] = 1.0  # type: ignore[index]
