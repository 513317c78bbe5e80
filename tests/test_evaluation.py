from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from autoprune.errors import UserError
from autoprune.evaluation import evaluate_features, evaluate_rank, pairwise_distance, ranks_at, re_ranking


def _quiet_rank(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_rank(*args, **kwargs)


def test_hand_computed_example() -> None:
    # gallery:        g0         g1         g2         g3         g4
    # (pid, cam):    (1, 0)     (2, 1)     (1, 1)     (3, 0)     (1, 2)
    # q0 (pid 1, cam 0), d = .1 .2 .3 .4 .5: g0 is the same pid in the same camera -> dropped; kept order
    #   g1 g2 g3 g4 -> matches 0 1 0 1: first match at rank 1, CMC 0 1 1 1, AP = (1/2 + 2/4) / 2 = 0.5.
    # q1 (pid 2, cam 0), d = .5 .1 .2 .3 .4: order g1 g2 g3 g4 g0 -> matches 1 0 0 0 0: CMC 1 1 1 1, AP = 1.
    # q2 (pid 3, cam 0): its only gallery image g3 is in its own camera -> no valid match, skipped.
    # CMC = mean(0 1 1 1, 1 1 1 1) = .5 1 1 1; mAP = (0.5 + 1) / 2 = 0.75.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1, 0.4, 0.5]])
    cmc, mAP = evaluate_rank(distmat, [1, 2, 3], [1, 2, 1, 3, 1], [0, 0, 0], [0, 1, 1, 0, 2], max_rank=4)
    np.testing.assert_allclose(cmc, [0.5, 1, 1, 1])
    assert cmc.dtype == np.float32 and mAP == pytest.approx(0.75)


def test_ties_keep_gallery_order() -> None:
    # All distances tie: the stable order is g0 g1 g2 -> matches 0 1 1, first match at rank 1,
    # AP = (1/2 + 2/3) / 2 = 7/12. Reversing the gallery puts both matches first: AP 1.
    cmc, mAP = evaluate_rank(np.full((1, 3), 0.5), [1], [2, 1, 1], [0], [1, 1, 2], max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx(7 / 12)
    cmc, mAP = evaluate_rank(np.full((1, 3), 0.5), [1], [1, 1, 2], [0], [2, 1, 1], max_rank=3)
    np.testing.assert_allclose(cmc, [1, 1, 1])
    assert mAP == pytest.approx(1.0)
    # evaluate_features ranks identical features (all cosine distances 1) the same way.
    res = evaluate_features(torch.zeros(1, 4), torch.zeros(3, 4), [1], [2, 1, 1], [0], [1, 1, 2])
    assert res == {"rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "mAP": pytest.approx(7 / 12)}


def test_distractors_and_same_camera_exclusion() -> None:
    # q (pid 5, cam 0): g0 = pid 5 cam 0 (same view, excluded even though nearest), g1 = distractor pid 0,
    # g2 = pid 5 cam 1 -> kept order g1 g2: first match at rank 1, AP = 1/2.
    cmc, mAP = evaluate_rank(np.array([[0.0, 0.1, 0.2]]), [5], [5, 0, 5], [0], [0, 1, 1], max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert mAP == pytest.approx(0.5)
    # The same pid in the same camera but a different camid for the gallery copy counts as a hit.
    cmc, mAP = evaluate_rank(np.array([[0.0, 0.1, 0.2]]), [5], [5, 0, 5], [0], [3, 1, 1], max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])
    assert mAP == pytest.approx((1 + 2 / 3) / 2)


def test_query_without_valid_match_is_skipped() -> None:
    # q1 has no gallery image of pid 9 at all; only q0 counts.
    cmc, mAP = evaluate_rank(np.array([[0.2, 0.1], [0.1, 0.2]]), [1, 9], [1, 2], [0, 0], [1, 1], max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert mAP == pytest.approx(0.5)


def test_all_invalid_raises_user_error() -> None:
    with pytest.raises(UserError, match="no query has a correct match in the gallery from a different camera"):
        evaluate_rank(np.zeros((2, 2)), [1, 2], [1, 2], [0, 1], [0, 1], max_rank=2)
    with pytest.raises(UserError, match="no query has a correct match"):
        evaluate_features(torch.randn(2, 3), torch.randn(2, 3), [1, 2], [1, 2], [0, 1], [0, 1])
    with pytest.raises(UserError, match="nothing to evaluate: 0 queries"):
        evaluate_features(torch.randn(0, 3), torch.randn(2, 3), [], [1, 2], [], [0, 1])


def test_nan_and_bad_metric_raise_user_error() -> None:
    with pytest.raises(UserError, match="distance matrix contains NaN"):
        evaluate_rank(np.array([[np.nan, 1.0]]), [1], [1, 1], [0], [1, 1], max_rank=2)
    qf = torch.randn(2, 3)
    qf[1, 0] = float("nan")
    with pytest.raises(UserError, match="features contain NaN"):
        evaluate_features(qf, torch.randn(2, 3), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(UserError, match="unknown distance metric 'l3'; use one of cosine, euclidean"):
        pairwise_distance(qf, qf, metric="l3")


def test_small_gallery_warns_and_truncates_cmc() -> None:
    with pytest.warns(UserWarning, match="gallery has only 3 images, fewer than max_rank=50"):
        cmc, _ = evaluate_rank(np.array([[0.3, 0.1, 0.2]]), [1], [1, 2, 3], [0], [1, 1, 1])
    np.testing.assert_allclose(cmc, [0, 0, 1])
    assert ranks_at(cmc) == {"rank1": 0.0, "rank5": 1.0, "rank10": 1.0}


def _brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """The protocol in its plainest form: sort by (distance, gallery index), drop same pid+camera."""
    cmcs, aps = [], []
    for i in range(len(q_pids)):
        ranked = sorted(range(len(g_pids)), key=lambda j: (distmat[i][j], j))
        kept = [j for j in ranked if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        match = [g_pids[j] == q_pids[i] for j in kept]
        if not any(match):
            continue
        first = match.index(True)
        cmcs.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        precisions = []
        for rank, hit in enumerate(match):
            if hit:
                precisions.append((len(precisions) + 1) / (rank + 1))
        aps.append(sum(precisions) / len(precisions))
    if not aps:
        return None
    return np.mean(cmcs, axis=0), float(np.mean(aps))


def test_matches_brute_force_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        nq, ng = rng.integers(1, 25), rng.integers(1, 40)
        distmat = rng.integers(0, 4, (nq, ng)).astype(np.float32)  # 4 distinct values: ties everywhere
        q_pids, g_pids = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
        q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
        max_rank = min(10, ng)
        reference = _brute_force(distmat, q_pids, g_pids, q_cams, g_cams, max_rank)
        if reference is None:
            with pytest.raises(UserError):
                _quiet_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
            continue
        cmc, mAP = _quiet_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
        ref_cmc, ref_map = reference
        np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
        assert mAP == pytest.approx(ref_map, abs=1e-6)
        checked += 1
    assert checked > 40


@st.composite
def _problems(draw):
    nq, ng, dim = draw(st.integers(1, 12)), draw(st.integers(1, 30)), draw(st.integers(1, 4))
    ints = lambda shape, hi: arrays(np.int64, shape, elements=st.integers(0, hi))  # noqa: E731
    return (
        torch.tensor(draw(ints((nq, dim), 2)), dtype=torch.float32),
        torch.tensor(draw(ints((ng, dim), 2)), dtype=torch.float32),
        draw(ints(nq, 4)),
        draw(ints(ng, 4)),
        draw(ints(nq, 2)),
        draw(ints(ng, 2)),
        draw(st.integers(1, 8)),
        draw(st.sampled_from(["euclidean", "cosine"])),
    )


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_chunked_features_equal_evaluate_rank(problem) -> None:
    # Small-integer features give exact distances and many ties, so any tie-order difference would show.
    qf, gf, q_pids, g_pids, q_cams, g_cams, chunk, metric = problem
    distmat = pairwise_distance(qf, gf, metric=metric, chunk_size=chunk)
    try:
        cmc, mAP = _quiet_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    except UserError:
        with pytest.raises(UserError):
            evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=chunk)
        return
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=chunk)
    expected = {**ranks_at(cmc), "mAP": mAP}
    assert set(res) == {"rank1", "rank5", "rank10", "mAP"}
    for key, value in res.items():
        assert isinstance(value, float) and 0.0 <= value <= 1.0
        assert value == pytest.approx(expected[key], abs=1e-6)


def test_chunked_features_equal_evaluate_rank_random_floats() -> None:
    gen = torch.Generator().manual_seed(1)
    # 600 queries in chunks of 550: the first chunk is split over worker threads (on >= 2 CPUs).
    qf, gf = torch.randn(600, 16, generator=gen), torch.randn(500, 16, generator=gen)
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(0, 30, 600), rng.integers(0, 30, 500)
    q_cams, g_cams = rng.integers(0, 4, 600), rng.integers(0, 4, 500)
    g_pids[:300] = 7  # one pid with more gallery images than the counting limit -> the sorting branch
    assert (q_pids == 7).any()
    for metric in ("cosine", "euclidean"):
        cmc, mAP = evaluate_rank(pairwise_distance(qf, gf, metric, chunk_size=550), q_pids, g_pids, q_cams, g_cams)
        res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=550)
        assert res == pytest.approx({**ranks_at(cmc), "mAP": mAP}, abs=1e-6)


def test_pairwise_distance() -> None:
    gen = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(11, 5, generator=gen)
    cos = pairwise_distance(qf, gf, chunk_size=3)
    q64, g64 = qf.double(), gf.double()
    expected = 1 - (q64 / q64.norm(dim=1, keepdim=True)) @ (g64 / g64.norm(dim=1, keepdim=True)).T
    assert cos.dtype == np.float32 and cos.shape == (7, 11)
    np.testing.assert_allclose(cos, expected.numpy(), atol=1e-6)
    euc = pairwise_distance(qf, gf, metric="euclidean", chunk_size=2)
    np.testing.assert_allclose(euc, (torch.cdist(q64, g64) ** 2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cos, pairwise_distance(qf, gf, chunk_size=100), atol=1e-6)


def test_cuhk03_metric_is_seeded() -> None:
    # Each query (pid 1, cam 0) sees pid 2 at distance .1 and .9 and its own pid at .5 in camera 1:
    # single-shot rank 1 happens when the draw for pid 2 is the .9 image. AP uses the full list: 1/2.
    nq = 40
    distmat = np.tile([0.1, 0.5, 0.9], (nq, 1))
    args = (distmat, np.ones(nq), [2, 1, 2], np.zeros(nq), [1, 1, 1])
    cmc, mAP = _quiet_rank(*args, max_rank=3, use_metric_cuhk03=True, seed=3)
    again, _ = _quiet_rank(*args, max_rank=3, use_metric_cuhk03=True, seed=3)
    np.testing.assert_array_equal(cmc, again)
    assert 0.35 < cmc[0] < 0.65 and cmc[1] == 1.0 and cmc[2] == 1.0
    assert mAP == pytest.approx(0.5)
    others = [_quiet_rank(*args, max_rank=3, use_metric_cuhk03=True, seed=s)[0][0] for s in range(4, 8)]
    assert any(o != cmc[0] for o in others)
    market, _ = _quiet_rank(*args, max_rank=3)
    np.testing.assert_allclose(market, [0, 1, 1])


def _rerank_reference(q_g, q_q, g_g, k1, k2, lam):
    """Loop transcription of Zhong et al.'s algorithm, dense, float64."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    dist = (full / full.max(axis=0)).T
    n, nq = len(dist), len(q_q)
    ranked = [sorted(range(n), key=lambda j: (dist[i][j], j)) for i in range(n)]

    def recip(i, k):
        return [j for j in ranked[i][: k + 1] if i in ranked[j][: k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        members = set(r)
        for c in r:
            half = recip(c, int(np.around(k1 / 2)))
            if len(set(half) & set(r)) > 2 / 3 * len(half):
                members |= set(half)
        idx = sorted(members)
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.array([v[ranked[i][:k2]].mean(axis=0) for i in range(n)])
    jaccard = np.array(
        [[1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(nq, n)] for i in range(nq)]
    )
    return (1 - lam) * jaccard + lam * dist[:nq, nq:]


def _clusters(seed: int, ids: int = 8, per_id: int = 5, noise: float = 0.9):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, 8))
    g_pids = np.repeat(np.arange(ids), per_id)
    q_pids = np.arange(ids)
    gf = centres[g_pids] + noise * rng.normal(size=(len(g_pids), 8))
    qf = centres[q_pids] + noise * rng.normal(size=(ids, 8))
    return torch.tensor(qf), torch.tensor(gf), q_pids, g_pids, np.zeros(ids), np.ones(len(g_pids))


def test_re_ranking_matches_loop_reference() -> None:
    qf, gf, *_ = _clusters(0, ids=5, per_id=4)
    q_g, q_q, g_g = (torch.cdist(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    for k1, k2, lam in ((6, 3, 0.3), (4, 1, 0.0), (5, 2, 0.7)):
        out = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
        assert out.shape == (5, 20) and out.dtype == np.float32
        np.testing.assert_allclose(out, _rerank_reference(q_g, q_q, g_g, k1, k2, lam), atol=1e-5)


def test_re_ranking_keeps_or_improves_map_on_clusters() -> None:
    gains = []
    for seed in range(3):
        qf, gf, q_pids, g_pids, q_cams, g_cams = _clusters(seed)
        q_g, q_q, g_g = (torch.cdist(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
        _, before = evaluate_rank(q_g, q_pids, g_pids, q_cams, g_cams, max_rank=10)
        _, after = evaluate_rank(re_ranking(q_g, q_q, g_g, k1=6, k2=3), q_pids, g_pids, q_cams, g_cams, max_rank=10)
        assert after >= before - 1e-9
        gains.append(after - before)
    assert max(gains) > 0.01


def test_per_query_hits_and_aps_are_the_metrics_query_by_query() -> None:
    gen = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(300, 16, generator=gen), torch.randn(400, 16, generator=gen)
    rng = np.random.default_rng(3)
    q_pids, g_pids = rng.integers(0, 20, 300), rng.integers(0, 20, 400)
    q_cams, g_cams = rng.integers(0, 3, 300), rng.integers(0, 3, 400)
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, per_query=True)
    assert set(res["hits"].tolist()) <= {0, 1} and len(res["hits"]) == len(res["aps"])
    assert res["hits"].mean() == pytest.approx(res["rank1"], abs=1e-9)
    assert res["aps"].mean() == pytest.approx(res["mAP"], abs=1e-6)
    plain = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams)
    assert "hits" not in plain and plain["rank1"] == res["rank1"]
