"""`autoprune dashboard`: the run's study served by optuna-dashboard on loopback, read back over HTTP."""

from __future__ import annotations

import json
import threading
import urllib.request

import optuna
import pytest

from autoprune.cli import main
from autoprune.dashboard import dashboard_attrs, make_server

RECORD = {
    "policy": {"layer1.out": 0.5},
    "macs_ratio": 0.498,
    "target": {"rank1": 0.31, "mAP": 0.2},
    "target_val": {"rank1": 0.42, "mAP": 0.3},
    "error": None,
}


def test_dashboard_serves_the_study_with_policy_macs_and_metrics(tmp_path):
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="autoprune", direction="maximize"
    )
    trial = study.ask()
    for key, value in dashboard_attrs(RECORD).items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.42)
    server = make_server(tmp_path, port=0)  # a free loopback port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert server.server_address[0] == "127.0.0.1"
        studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))["study_summaries"]
        [summary] = [s for s in studies if s["study_name"] == "autoprune"]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=30))
    finally:
        server.shutdown()
        server.server_close()
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert attrs["macs_ratio"] == "0.498" and attrs["val_rank1"] == "0.42" and attrs["test_rank1"] == "0.31"
    assert json.loads(attrs["policy"].replace("'", '"')) == {"layer1.out": 0.5}


def test_dashboard_of_a_folder_without_a_study_is_a_user_error(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "has no study.db" in capsys.readouterr().err


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"macs_ratio": None, "policy": {}, "target": None, "target_val": None}, {"macs_ratio": None, "policy": {}}),
    ],
)
def test_dashboard_attrs_of_a_record_without_metrics(record, expected):
    assert dashboard_attrs(record) == expected
