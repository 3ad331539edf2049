"""Pooling checked against a plain Python loop, and merge against pooling in one go."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pooling import Pooled, merge, pool_tokens


def _reference(token_doc, starts, ends, t_idx, l_idx, vals):
    out: dict[tuple[int, int], list] = {}
    for t, lat, v in zip(t_idx, l_idx, vals, strict=True):
        key = (int(token_doc[t]), int(lat))
        if key not in out:
            out[key] = [v, v, 1, starts[t], ends[t]]
        else:
            cur = out[key]
            if v > cur[0]:  # strictly greater: the earliest token wins ties
                cur[0], cur[3], cur[4] = v, starts[t], ends[t]
            cur[1] += v
            cur[2] += 1
    return out


def _random_coo(rng, n_tok=200, n_doc=7, d_sae=30, density=0.2):
    token_doc = np.sort(rng.integers(0, n_doc, n_tok))
    starts = np.arange(n_tok, dtype=np.int32) * 3
    ends = starts + 2
    dense = rng.random((n_tok, d_sae)).astype(np.float32)
    dense[rng.random((n_tok, d_sae)) > density] = 0
    dense[5, 3] = dense[9, 3] = 7.0  # an exact tie inside one document, maybe
    t_idx, l_idx = np.nonzero(dense)
    return token_doc, starts, ends, t_idx, l_idx, dense[t_idx, l_idx]


def _as_dict(p: Pooled):
    return {
        (int(d), int(lat)): [m, s, n, a, b]
        for d, lat, m, s, n, a, b in zip(
            p.doc, p.latent, p.max_act, p.sum_act, p.n_active, p.char_start, p.char_end, strict=True
        )
    }


def test_pool_matches_reference_loop():
    rng = np.random.default_rng(0)
    args = _random_coo(rng)
    got, want = _as_dict(pool_tokens(*args)), _reference(*args)
    assert got.keys() == want.keys()
    for k, (m, s, n, a, b) in want.items():
        g = got[k]
        assert g[0] == m and g[2] == n and (g[3], g[4]) == (a, b)
        assert abs(g[1] - s) < 1e-4


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 199))
def test_merging_partial_pools_equals_pooling_everything(seed, cut):
    rng = np.random.default_rng(seed)
    token_doc, starts, ends, t_idx, l_idx, vals = _random_coo(rng)
    whole = pool_tokens(token_doc, starts, ends, t_idx, l_idx, vals)
    first = t_idx < cut
    parts = [
        pool_tokens(token_doc, starts, ends, t_idx[m], l_idx[m], vals[m]) for m in (first, ~first)
    ]
    merged = merge(Pooled.concat(parts))
    a, b = _as_dict(whole), _as_dict(merged)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0] and a[k][2] == b[k][2] and a[k][3:] == b[k][3:]
        assert abs(a[k][1] - b[k][1]) < 1e-4


def test_empty_input():
    p = pool_tokens(
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        np.zeros(0, np.float32),
    )
    assert len(p) == 0
