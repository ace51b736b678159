import pytest
import torch

from grok.analysis import similarity as sim
from grok.analysis.base import Probe, forward_pass
from grok.assemble import model_config
from grok.config import ConfigError
from grok.data.splits import make_split
from grok.data.tasks import build_task
from grok.model import Bilinear, build_model
from grok.train.checkpoint import list_checkpoints, load_checkpoint
from tests.conftest import compose_config, run_cli

CONFIG = {"arch": "bilinear", "d_vocab": 8, "n_classes": 7, "d_embed": 5, "d_hidden": 6}


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model({**CONFIG, **kw})


def all_tokens(p=7):
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], dim=1)


def test_forward_is_the_bilinear_formula_and_caches_the_hidden_layer():
    m = model()
    tokens = all_tokens()
    out = m(tokens, return_cache=True)
    for row in (0, 9, 48):
        a, b = tokens[row, :2]
        x = torch.cat([m.W_E[a], m.W_E[b]])
        hidden = (x @ m.W_L) * (x @ m.W_R)
        torch.testing.assert_close(out.logits[row], hidden @ m.W_U)
        torch.testing.assert_close(out.residuals[0, row], hidden)
    assert out.residuals.shape == (1, 49, 6) and out.attention is None
    assert isinstance(build_model(m.config_dict()), Bilinear)


def test_interaction_factors_reproduce_every_logit_as_a_quadratic_form():
    """logit_c(a, b) = z^T T_c z with z = [onehot(a); onehot(b)]: the factors really are the
    model, embeddings included."""
    m = model(seed=1)
    u, l_, r = m.interaction_factors()
    t = torch.einsum("hc,ih,jh->cij", u, l_, r)  # (7, 14, 14)
    tokens = all_tokens()
    z = torch.zeros(len(tokens), 14, dtype=torch.float64)
    z[torch.arange(len(tokens)), tokens[:, 0]] = 1
    z[torch.arange(len(tokens)), 7 + tokens[:, 1]] = 1
    want = torch.einsum("ni,cij,nj->nc", z, t, z)
    torch.testing.assert_close(m(tokens).logits.double(), want, rtol=1e-5, atol=1e-5)


def test_permuting_hidden_units_keeps_the_function_and_exact_similarity_one():
    m = model(seed=2)
    other = model(seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        other.W_L.copy_(m.W_L[:, perm])
        other.W_R.copy_(m.W_R[:, perm])
        other.W_U.copy_(m.W_U[perm])
    tokens = all_tokens()
    torch.testing.assert_close(other(tokens).logits, m(tokens).logits, rtol=1e-5, atol=1e-6)
    f1, f2 = m.interaction_factors(), other.interaction_factors()
    assert sim.interaction_similarity(f1, f2) == pytest.approx(1.0, abs=1e-12)
    assert sim.interaction_similarity(f1, model(seed=3).interaction_factors()) < 0.9


def test_forward_pass_accepts_a_model_without_attention():
    task = build_task("add", 7)
    probe = Probe.full(task, make_split(task, "random", 0.5, seed=0))
    fp = forward_pass(model(), probe, step=0, batch=10)
    assert fp.attention is None and fp.residuals.shape == (1, 49, 6)


def test_model_bilinear_composes_and_maps_sizes():
    cfg = compose_config("model=bilinear", "task.p=11", "model.d_model=16", "model.d_mlp=24")
    built = model_config(cfg, build_task("add", 11))
    assert built == {"arch": "bilinear", "d_vocab": 12, "n_classes": 11, "d_embed": 16,
                     "d_hidden": 24}
    with pytest.raises(ConfigError, match="model.n_layers=2"):
        compose_config("model=bilinear", "model.n_layers=2")


def test_cli_trains_the_bilinear_model(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("model=bilinear", "task.p=7", "steps=20", "train.eval_every=10",
                     "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    step, path = list_checkpoints(run_dir)[-1]
    saved = load_checkpoint(path)
    assert step == 20 and saved["model_config"]["arch"] == "bilinear"
    assert set(saved["model_state"]) == {"W_E", "W_L", "W_R", "W_U"}
