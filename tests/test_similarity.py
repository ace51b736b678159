import itertools
import math

import numpy as np
import pytest
import torch

from grok.analysis import similarity as sim


def random_logits(n_models=5, n=30, c=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_models, n, c, generator=g) * scale


def test_js_matches_a_hand_computed_value():
    # P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4), H(M) = 2 ln 2 - (3/4) ln 3, H(P) = ln 2,
    # H(Q) = 0, so JS = H(M) - (H(P) + H(Q)) / 2 = (3/2) ln 2 - (3/4) ln 3 = 0.21576...
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    expected = 1.5 * math.log(2) - 0.75 * math.log(3)
    assert sim.js_from_probs(p, q) == pytest.approx(expected, abs=1e-12)
    assert sim.js_from_probs(p, q) == pytest.approx(0.215762, abs=1e-6)
    # the same through logits (softmax of (0, -inf) is (1, 0)) and disjoint supports give ln 2
    assert sim.js_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -torch.inf]])) \
        == pytest.approx(expected, abs=1e-12)
    assert sim.js_from_probs(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) \
        == pytest.approx(math.log(2), abs=1e-12)


def test_js_is_symmetric_zero_on_the_diagonal_and_within_0_ln2():
    logits = random_logits(4, scale=10.0)
    for a, b in itertools.product(logits, repeat=2):
        value = sim.js_divergence(a, b)
        assert 0.0 <= value <= math.log(2)
        assert value == pytest.approx(sim.js_divergence(b, a), abs=1e-12)
    assert sim.js_divergence(logits[0], logits[0]) == pytest.approx(0.0, abs=1e-12)


def test_cka_is_invariant_to_rotation_and_isotropic_scaling_but_not_to_stretching():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 6, generator=g, dtype=torch.float64) + torch.randn(50, 6, generator=g,
                                                                            dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))  # orthogonal
    base = sim.linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert sim.linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert sim.linear_cka(x, 7.5 * y @ q.T) == pytest.approx(base, abs=1e-12)
    assert sim.linear_cka(x + 3.0, y) == pytest.approx(base, abs=1e-12)  # centred
    assert sim.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    stretch = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert abs(sim.linear_cka(x @ stretch, y) - base) > 1e-3  # the invariances are specific


def test_tn_similarity_ignores_a_per_input_constant_and_scale():
    logits = random_logits(2).double()
    a, b = logits[0], logits[1]
    shift = torch.randn(a.shape[0], 1, dtype=torch.float64) * 100
    base = sim.tn_similarity(a, b)
    assert -1.0 < base < 1.0
    assert sim.tn_similarity(a + shift, b) == pytest.approx(base, abs=1e-12)
    assert sim.tn_similarity(a, 3.0 * b - shift) == pytest.approx(base, abs=1e-12)
    assert sim.tn_similarity(a, a + shift) == pytest.approx(1.0, abs=1e-12)
    assert sim.tn_similarity(a, -a) == pytest.approx(-1.0, abs=1e-12)
    # a constant per class (not per input) is not removed
    assert abs(sim.tn_similarity(a + torch.arange(7.0) * 3, b) - base) > 1e-3


def direct_matrices(logits, reps):
    """Every pair through the float64 one-pair references."""
    n = len(logits)
    tn, cka, js = (np.zeros((n, n)) for _ in range(3))
    for i, j in itertools.product(range(n), repeat=2):
        tn[i, j] = sim.tn_similarity(logits[i], logits[j])
        cka[i, j] = sim.linear_cka(reps[i], reps[j])
        js[i, j] = sim.js_divergence(logits[i], logits[j])
    return tn, cka, js


def block_features(logits, reps):
    """What the trajectory suite keeps per model, in float32."""
    centred = sim.centre_classes(logits)
    probs = torch.stack([sim.probabilities(c) for c in centred])
    xt = torch.stack([sim.centre_inputs(r).T.contiguous() for r in reps])
    return centred, probs, xt


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7])
def test_blockwise_matrices_equal_the_direct_computation(block):
    n_models, n, c, d = 7, 40, 11, 5
    logits = random_logits(n_models, n, c, seed=2, scale=4.0)
    logits[3] = logits[2] + 0.01 * torch.randn(n, c)  # a nearly identical pair
    reps = torch.randn(n_models, n, d) + 2.0
    centred, probs, xt = block_features(logits, reps)
    stats = [sim.neg_entropy_and_mass(p) for p in probs]
    neg_h = np.array([s[0] for s in stats])
    mass = np.array([s[1] for s in stats])
    loads = []

    def load(i, j):
        loads.append((i, j))
        return {"l": centred[i:j], "p": probs[i:j], "x": xt[i:j]}

    def kernel(a, b, same):
        return {"gram": sim.gram_block(a["l"], b["l"], chunk=50),
                "hsic": sim.hsic_block(a["x"], b["x"], upper=same, rows=2),
                "xlogx": sim.xlogx_sum_block(a["p"], b["p"], upper=same, tile=2, chunk=64)}

    out = sim.blockwise_matrices(n_models, block, load, kernel)
    tn = sim.cosine_from_gram(out["gram"])
    cka = sim.cosine_from_gram(out["hsic"])
    js = sim.js_from_sums(out["xlogx"], neg_h, mass, n)
    want_tn, want_cka, want_js = direct_matrices(logits, reps)
    np.testing.assert_allclose(tn, want_tn, atol=1e-6)
    np.testing.assert_allclose(cka, want_cka, atol=1e-6)
    np.testing.assert_allclose(js, want_js, atol=1e-7)
    for m in (tn, cka, js):
        np.testing.assert_array_equal(m, m.T)
    np.testing.assert_allclose(np.diag(tn), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(js), 0.0, atol=1e-7)
    assert 0 < js[2, 3] < 1e-4 and js[2, 3] == pytest.approx(want_js[2, 3], rel=1e-2)
    k = -(-n_models // block)
    assert len(loads) == k * (k + 1) // 2  # never more than two blocks at a time, no reloads


def test_blocks_that_are_only_half_computed_are_mirrored_exactly():
    probs = torch.softmax(random_logits(5, 20, 4, seed=3), -1).reshape(5, -1)
    full = sim.xlogx_sum_block(probs, probs, upper=False, tile=2, chunk=16)
    upper = sim.xlogx_sum_block(probs, probs, upper=True, tile=2, chunk=16)
    torch.testing.assert_close(upper, full, rtol=0, atol=1e-9)
    xt = torch.randn(5, 3, 20)
    torch.testing.assert_close(sim.hsic_block(xt, xt, upper=True, rows=2),
                               sim.hsic_block(xt, xt), rtol=1e-6, atol=0)


def test_js_kernel_is_accurate_for_near_identical_large_tables():
    """The sum-of-S-log-S form cancels large terms; check it against float64 on p = 97 sized
    tables, where a plain float32 sum would be off by ~1e-6."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(1200, 97, generator=g) * 5
    b = a + 0.02 * torch.randn(1200, 97, generator=g)
    pa, pb = sim.probabilities(a), sim.probabilities(b)
    stats = [sim.neg_entropy_and_mass(p) for p in (pa, pb)]
    sums = sim.xlogx_sum_block(torch.stack([pa, pb]), torch.stack([pa, pb]), upper=True)
    js = sim.js_from_sums(sums.numpy(), np.array([s[0] for s in stats]),
                          np.array([s[1] for s in stats]), 1200)
    want = sim.js_divergence(a, b)
    assert 1e-5 < want < 1e-3
    assert js[0, 1] == pytest.approx(want, abs=2e-8)


def random_factors(h=5, c=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(h, c, generator=g, dtype=torch.float64),
            torch.randn(d, h, generator=g, dtype=torch.float64),
            torch.randn(d, h, generator=g, dtype=torch.float64))


def brute_force_tensor(f):
    """T[c, i, j] = sum_h U[h, c] L[i, h] R[j, h] by explicit loops, centred over classes and
    symmetrised over (i, j)."""
    u, l_, r = f
    h, c = u.shape
    d = l_.shape[0]
    t = torch.zeros(c, d, d, dtype=torch.float64)
    for cc, i, j, hh in itertools.product(range(c), range(d), range(d), range(h)):
        t[cc, i, j] += u[hh, cc] * l_[i, hh] * r[j, hh]
    t = t - t.mean(dim=0, keepdim=True)
    return (t + t.transpose(1, 2)) / 2


def test_interaction_similarity_matches_brute_force_full_tensors():
    f1, f2 = random_factors(seed=0), random_factors(h=3, seed=1)  # different hidden widths
    t1, t2 = brute_force_tensor(f1), brute_force_tensor(f2)
    want = float((t1 * t2).sum() / (t1.norm() * t2.norm()))
    assert sim.interaction_inner(f1, f2) == pytest.approx(float((t1 * t2).sum()), rel=1e-12)
    assert sim.interaction_similarity(f1, f2) == pytest.approx(want, rel=1e-12)
    assert sim.interaction_similarity(f1, f1) == pytest.approx(1.0, rel=1e-12)
    # the materialised features give the same inner products
    v1, v2 = sim.interaction_features(f1), sim.interaction_features(f2)
    assert float(v1 @ v2) == pytest.approx(float((t1 * t2).sum()), rel=1e-12)
    assert float(v1 @ v1) == pytest.approx(float((t1 * t1).sum()), rel=1e-12)


def test_interaction_similarity_is_invariant_to_permuting_and_swapping_hidden_factors():
    f = random_factors(h=6, seed=2)
    u, l_, r = f
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted = (u[perm], l_[:, perm], r[:, perm])
    assert sim.interaction_similarity(f, permuted) == pytest.approx(1.0, rel=1e-12)
    # swapping L and R gives the transposed T, whose symmetric part is the same
    assert sim.interaction_similarity(f, (u, r, l_)) == pytest.approx(1.0, rel=1e-12)
    # rescaling a hidden unit's L by s and its U by 1/s leaves the function unchanged
    scale = torch.ones(6, dtype=torch.float64)
    scale[1] = 4.0
    rescaled = (u / scale[:, None], l_ * scale, r)
    assert sim.interaction_similarity(f, rescaled) == pytest.approx(1.0, rel=1e-12)
    other = random_factors(h=6, seed=3)
    assert sim.interaction_similarity(f, other) < 0.9
