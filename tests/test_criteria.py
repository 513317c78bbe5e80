"""Every built-in criterion against the criterion contract, plus what is specific to each."""

from __future__ import annotations

from autoprune.testing import CriterionContract
from autoprune_plugins.criteria import (
    BNScaleCriterion,
    FPGMCriterion,
    GradientCriterion,
    L1Criterion,
    L2Criterion,
    RandomCriterion,
    TaylorActivationCriterion,
    TaylorCriterion,
)


class TestL1Criterion(CriterionContract):
    criterion_class = L1Criterion


class TestL2Criterion(CriterionContract):
    criterion_class = L2Criterion


class TestFPGMCriterion(CriterionContract):
    criterion_class = FPGMCriterion


class TestBNScaleCriterion(CriterionContract):
    criterion_class = BNScaleCriterion


class TestTaylorCriterion(CriterionContract):
    criterion_class = TaylorCriterion


class TestTaylorActivationCriterion(CriterionContract):
    criterion_class = TaylorActivationCriterion


class TestGradientCriterion(CriterionContract):
    criterion_class = GradientCriterion


class TestRandomCriterion(CriterionContract):
    criterion_class = RandomCriterion
    ranks_planted = False
