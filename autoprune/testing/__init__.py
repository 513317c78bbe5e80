"""Test suites a plugin author subclasses to prove a criterion, strategy, scenario, dataset reader or
backbone (needs pytest).

::

    from autoprune.testing import CriterionContract

    class TestMyCriterion(CriterionContract):
        criterion_class = MyCriterion

The helpers the suites are built on (a tiny ResNet-10, random batches, a recording fine-tune, fake
domains and host services) are exported too, for a plugin's own specific tests.
"""

from __future__ import annotations

from autoprune.testing.contracts import (
    NUM_CLASSES,
    SIZE,
    CriterionContract,
    FinetuneCall,
    RecordingFinetune,
    ScenarioContract,
    ScenarioRecorder,
    ServiceCall,
    StrategyContract,
    classification_loss,
    criterion_context,
    fake_domain,
    loss_term_value,
    min_width,
    plant_weak_channel,
    random_batches,
    scenario_context,
    score_all,
    strategy_context,
    tiny_graph,
    tiny_model,
    zeroed_channels,
)
from autoprune.testing.data_contracts import BackboneContract, DatasetReaderContract

__all__ = [
    "BackboneContract",
    "DatasetReaderContract",
    "NUM_CLASSES",
    "SIZE",
    "CriterionContract",
    "FinetuneCall",
    "RecordingFinetune",
    "ScenarioContract",
    "ScenarioRecorder",
    "ServiceCall",
    "StrategyContract",
    "classification_loss",
    "criterion_context",
    "fake_domain",
    "loss_term_value",
    "min_width",
    "plant_weak_channel",
    "random_batches",
    "scenario_context",
    "score_all",
    "strategy_context",
    "tiny_graph",
    "tiny_model",
    "zeroed_channels",
]
