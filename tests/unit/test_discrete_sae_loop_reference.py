"""The discrete-SAE scoring against an independent loop-for-loop re-implementation of the
reference algorithm (O'Neill & Bui 2024, charlieoneill11/sae-circuits: ``src/node.py``
``unique_to_positives_and_negatives`` + softmax, ``src/edge.py`` ``gen_co_occurrence_matrix`` +
``unique_co_occurrences`` with normalise=False, and ``edge_circuit_prediction``: the top head
pairs turned into node counts), written from that description — python sets per head, a dense
[heads, heads, codes, codes] co-occurrence matrix, a list of the sorted pairs' heads — on random
codes. The reference sorts with numpy's default (unstable) sort, which leaves ties in no set
order; both sides here break ties as a reversed stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.saes import discrete


def ref_nodes(pos, neg):
    counts = np.zeros(pos.shape[1])
    for i in range(pos.shape[1]):
        counts[i] = len(set(pos[:, i].tolist()) - set(neg[:, i].tolist()))
    e = np.exp(counts)
    return counts, e / e.sum(0)


def ref_edges(pos, neg, n_feat):
    n = pos.shape[1]

    def co(ind):
        m = np.zeros((n, n, n_feat, n_feat))
        for e in range(ind.shape[0]):
            for h1 in range(n):
                for h2 in range(n):
                    if h1 != h2:
                        m[h1, h2, ind[e, h1], ind[e, h2]] += 1
        return m

    P, N = co(pos), co(neg)
    out = np.zeros((n, n))
    for h1 in range(n):
        for h2 in range(n):
            if h1 != h2:
                out[h1, h2] = np.sum((P[h1, h2] > 0) & ~(N[h1, h2] > 0))
    return out


def ref_pair_nodes(counts):
    n = counts.shape[0]
    order = np.argsort(counts.flatten(), kind="stable")[::-1]
    rows, cols = np.unravel_index(order, counts.shape)
    components = []
    for h1, h2 in zip(rows, cols):
        components.append(h1)
        components.append(h2)
    y = np.zeros(n)
    for h in components[: n * n // 2]:
        y[h] += 1
    return y


@pytest.mark.parametrize("trial", range(5))
def test_discrete_scoring_matches_the_reference_loops(trial):
    rng = np.random.default_rng([0, trial])
    n_heads, n_feat = 20, 16
    # skewed code distributions, so that positive-only codes are neither all nor none
    pos = rng.choice(n_feat, size=(30, n_heads), p=np.r_[np.full(8, 0.1), np.full(8, 0.025)])
    neg = rng.choice(n_feat, size=(30, n_heads), p=np.r_[np.full(8, 0.025), np.full(8, 0.1)])
    c_ref, s_ref = ref_nodes(pos, neg)
    e_ref = ref_edges(pos, neg, n_feat)
    assert 0 < c_ref.sum() < n_heads * n_feat and 0 < e_ref.sum()  # the test is not vacuous
    np.testing.assert_array_equal(discrete.unique_positive_counts(pos, neg), c_ref)  # integer counts
    np.testing.assert_allclose(discrete.node_scores(pos, neg), s_ref, rtol=1e-12, atol=1e-15)  # float64 softmax
    e = discrete.edge_counts(pos, neg, n_feat)
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(discrete.pair_node_counts(e), ref_pair_nodes(e_ref))
