"""Effective rank, attention entropy, correlations and selection against known answers."""

import math

import numpy as np
import pytest
import torch

from grok.analysis.accuracy import AccuracyAnalyzer
from grok.analysis.alignment import align, average_ranks, pearson, sharpest_drop, spearman
from grok.analysis.base import ForwardPass, Probe
from grok.analysis.entropy import EntropyAnalyzer, attention_entropy
from grok.analysis.rank import RankAnalyzer, effective_rank, singular_values
from grok.analysis.selection import nearest_step, select_checkpoints, spread
from grok.data.splits import make_split
from grok.data.tasks import build_task


def _with_singular_values(s, n=40, seed=0, centred=True):
    """An (n, len(s)) matrix with exactly the singular values s and zero-mean columns."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, len(s), generator=gen, dtype=torch.float64)
    if centred:
        a = a - a.mean(0)
    u, _ = torch.linalg.qr(a)  # orthonormal columns, still orthogonal to the ones vector
    v, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def test_effective_rank_of_identity_is_full_and_of_rank_one_is_one():
    assert effective_rank(torch.eye(16), center=False).item() == pytest.approx(16.0)
    # centring the identity's columns leaves n - 1 equal singular values
    assert effective_rank(torch.eye(16)).item() == pytest.approx(15.0)
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((50, 1), (1, 12)))
    assert effective_rank(u @ v).item() == pytest.approx(1.0, abs=1e-9)
    # in float32 the rounding of u v^T leaves singular values ~1e-7 of the largest
    assert effective_rank((u @ v).float()).item() == pytest.approx(1.0, abs=1e-5)
    assert effective_rank(torch.zeros(10, 4)).item() == 0.0
    assert effective_rank(torch.ones(10, 4)).item() == 0.0  # constant columns centre to zero


@pytest.mark.parametrize("s", [[3.0, 1.0], [5.0, 4.0, 2.0, 1.0, 0.5], [1.0, 1e-3, 0.0, 0.0]])
def test_effective_rank_with_chosen_singular_values(s):
    x = _with_singular_values(s)
    q = np.array(s) / sum(s)
    expected = math.exp(-sum(v * math.log(v) for v in q if v > 0))
    assert effective_rank(x).item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(singular_values(x).numpy(), s, atol=1e-6)
    # batched over layers, float32 input as the residual stream is
    both = torch.stack([x, x[:, [0] * len(s)]]).float()
    np.testing.assert_allclose(effective_rank(both).numpy(), [expected, 1.0], rtol=1e-4)


def test_singular_values_match_numpy_svd_on_random_data():
    x = torch.randn(300, 24, dtype=torch.float64) @ torch.randn(24, 24, dtype=torch.float64)
    centred = (x - x.mean(0)).numpy()
    np.testing.assert_allclose(singular_values(x).numpy(),
                               np.linalg.svd(centred, compute_uv=False), rtol=1e-8)


def test_attention_entropy_of_uniform_one_hot_and_mixed_patterns():
    n = 5
    uniform = torch.full((1, n, 1, 3), 1 / 3)
    one_hot = torch.zeros(1, n, 1, 3)
    one_hot[..., 2] = 1.0
    mixed = torch.tensor([0.5, 0.25, 0.25]).expand(1, n, 1, 3)
    pattern = torch.cat([uniform, one_hot, mixed], dim=2)  # 3 heads
    h = attention_entropy(pattern)
    np.testing.assert_allclose(h.numpy(), [[math.log(3), 0.0, 1.5 * math.log(2)]], rtol=1e-7)
    # averaged over inputs: half one-hot, half uniform
    half = torch.cat([uniform[:, :2], one_hot[:, :2]], dim=1)
    assert attention_entropy(half).item() == pytest.approx(math.log(3) / 2)


def _forward(task, split, logits, residuals, attention):
    probe = Probe.full(task, split)
    return probe, ForwardPass(step=0, logits=logits, residuals=residuals, attention=attention)


def test_analyzers_read_the_shared_forward_pass():
    task = build_task("add", 5)
    split = make_split(task, "random", 0.6, seed=0)
    n = task.n
    logits = torch.nn.functional.one_hot(task.labels, 5).float() * 10
    wrong = split.test_idx[:3]
    logits[wrong] = torch.nn.functional.one_hot((task.labels[wrong] + 1) % 5, 5).float() * 10
    residuals = torch.stack([_with_singular_values([2.0, 1.0, 1.0], n=n).float(),
                             _with_singular_values([1.0, 0.0, 0.0], n=n).float()])
    attention = torch.full((2, n, 4, 3), 1 / 3)
    probe, fp = _forward(task, split, logits, residuals, attention)
    acc = AccuracyAnalyzer()(None, probe, fp)
    assert acc["train/acc"] == 1.0
    assert acc["test/acc"] == pytest.approx(1 - 3 / len(split.test_idx))
    rank = RankAnalyzer()(None, probe, fp)
    np.testing.assert_allclose(rank["rank"], [math.exp(-(0.5 * math.log(0.5) * 1 + 0.5 * math.log(
        0.25))), 1.0], rtol=1e-5)
    ent = EntropyAnalyzer()(None, probe, fp)
    np.testing.assert_allclose(ent["entropy"], np.full((2, 4), math.log(3)), rtol=1e-6)
    np.testing.assert_allclose(ent["entropy_norm"], np.ones((2, 4)), rtol=1e-6)
    assert EntropyAnalyzer()(None, probe, ForwardPass(0, logits, residuals, None)) == {}


def test_correlations_against_closed_forms():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    assert pearson(x, [1.0] * 5) is None and pearson([1, 2], [2, 1]) is None
    # constants that floats cannot represent centre to ~1e-17, not 0: still no correlation
    assert pearson([0.1] * 3, [87, 86, 80]) is None
    assert pearson(x, [1 / 4656] * 5) is None
    assert spearman(x, [v**3 for v in x]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, [v**3 for v in x]) < 0.99
    np.testing.assert_allclose(average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    y = np.array([0.3, 0.1, 0.9, 0.4, 0.2, 0.8])
    z = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 0.5])
    assert pearson(y, z) == pytest.approx(np.corrcoef(y, z)[0, 1])
    ry, rz = average_ranks(y), average_ranks(z)
    assert spearman(y, z) == pytest.approx(np.corrcoef(ry, rz)[0, 1])


def test_sharpest_drop_and_lag():
    steps = [0, 10, 20, 30, 40, 50, 60, 70]
    rank = [30, 30, 29, 29, 20, 12, 11, 11]
    drop = sharpest_drop(steps, rank, window=3)
    assert drop["step"] == 40 and drop["drop"] == pytest.approx(17.0)
    assert drop["window_steps"] == [30, 50]
    corr, drops = align(steps, [0, 0, 0, 0.1, 0.5, 1, 1, 1], {"rank": rank}, t_grok=50, window=3)
    assert drops["rank"]["lag"] == -10 and corr["rank"]["pearson"] < -0.9
    _, no_t = align(steps, [0] * 8, {"rank": rank}, t_grok=None, window=3)
    assert no_t["rank"]["lag"] is None


def test_checkpoint_selection_around_t_grok():
    steps = list(range(0, 101, 10))
    sel = select_checkpoints(steps, 52, before=3, near=2, after=3)
    assert sel == {"before": [0, 20, 40], "near": [50, 60], "after": [70, 80, 100]}
    assert select_checkpoints(steps, 55, near=1)["near"] == [50]  # tie: the earlier one
    few = select_checkpoints([0, 10, 20], 10, before=3, near=1, after=3)
    assert few == {"before": [0], "near": [10], "after": [20]}
    assert select_checkpoints(steps, None) == {"before": [], "near": [], "after": []}
    assert spread([1, 2, 3, 4, 5], 1) == [5] and spread([1, 2, 3], 0) == []
    # Index positions k * (n - 1) / (count - 1) are rounded half to even (position 2.5 -> 2), and
    # `after` counts from the last checkpoint, so it mirrors `before` (the documented tie rule).
    assert spread(list(range(6)), 3) == [0, 2, 5]
    tie = select_checkpoints(list(range(0, 130, 10)), 60, before=3, near=1, after=3)
    assert tie == {"before": [0, 20, 50], "near": [60], "after": [70, 100, 120]}
    assert nearest_step(steps, 26) == 30 and nearest_step(steps, 25) == 20
