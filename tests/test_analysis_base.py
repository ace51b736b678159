import torch

from grok.analysis.base import Probe, forward_pass, load_model
from grok.data.splits import make_split
from grok.data.tasks import build_task
from grok.model import build_model
from grok.train.checkpoint import save_weights


def test_forward_pass_matches_model_and_checkpoint_roundtrip(tmp_path):
    task = build_task("sub", 7)
    split = make_split(task, "random", 0.5, seed=0)
    cfg = {"arch": "transformer", "d_vocab": 8, "n_classes": 7, "n_ctx": 3, "n_layers": 2,
           "d_model": 16, "n_heads": 2, "d_mlp": 32, "act": "relu", "layer_norm": True}
    model = build_model(cfg)
    save_weights(tmp_path, 5, model, cfg, split.task)
    step, loaded = load_model(tmp_path / "checkpoints" / "step_0000005.pt")
    probe = Probe.full(task, split)
    fp = forward_pass(loaded, probe, step, batch=10)  # several batches
    assert step == 5 and fp.logits.shape == (49, 7)
    assert fp.residuals.shape == (2, 49, 16) and fp.attention.shape == (2, 49, 2, 3)
    torch.testing.assert_close(fp.logits, model(probe.tokens).logits)
