import math

import pytest
import torch
import torch.nn.functional as F

from grok.model import build_model


def config(**kw):
    base = dict(arch="transformer", d_vocab=12, n_classes=11, n_ctx=3, n_layers=2, d_model=32,
                n_heads=4, d_mlp=64, act="relu", layer_norm=True)
    return {**base, **kw}


def layer_norm(module, x):
    if isinstance(module, torch.nn.Identity):
        return x
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def mlp(module, x):
    return module.act(x @ module.W_in + module.b_in) @ module.W_out + module.b_out


def reference_forward(model, tokens):
    """Every layer on every position, head by head, with torch's fused LayerNorm: written
    independently of the model's tables, broadcast attention and last-layer-at-`=` path.
    Returns logits, residuals and `=`-query patterns."""
    x = model.W_E[tokens] + model.W_pos
    t = tokens.shape[1]
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    residuals, patterns = [], []
    for block in model.blocks:
        h = layer_norm(block.ln1, x)
        out = torch.zeros_like(x)
        layer_patterns = []
        for head in range(block.attn.W_Q.shape[0]):
            q = h @ block.attn.W_Q[head]
            k = h @ block.attn.W_K[head]
            v = h @ block.attn.W_V[head]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            out = out + (pattern @ v) @ block.attn.W_O[head]
            layer_patterns.append(pattern[:, -1])
        x = x + out
        x = x + mlp(block.mlp, layer_norm(block.ln2, x))
        residuals.append(x[:, -1])
        patterns.append(torch.stack(layer_patterns, dim=1))
    logits = layer_norm(model.ln_final, x[:, -1]) @ model.W_U
    return logits, torch.stack(residuals), torch.stack(patterns)


def random_layer_norms(model):
    """LayerNorm parameters away from their (1, 0) init, so that a wrong affine part shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("grad", [True, False])  # inference has its own MLP and LayerNorm path
@pytest.mark.parametrize("n_layers,layer_norm,act", [(1, False, "relu"), (2, True, "relu"),
                                                     (3, True, "gelu")])
def test_fast_forward_equals_reference(n_layers, layer_norm, act, grad):
    torch.manual_seed(0)
    model = build_model(config(n_layers=n_layers, layer_norm=layer_norm, act=act))
    random_layer_norms(model)
    tokens = torch.randint(0, 11, (50, 3))
    tokens[:, 2] = 11
    with torch.set_grad_enabled(grad):
        out = model(tokens, return_cache=True)
    logits, residuals, patterns = reference_forward(model, tokens)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.residuals, residuals, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.attention, patterns, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layers,layer_norm,act,d_vocab", [
    (1, False, "relu", 12), (2, True, "relu", 12), (3, True, "gelu", 12),
    (2, True, "relu", 98)])  # the last: power_2l's vocabulary with batch < vocab
def test_gradients_equal_reference(n_layers, layer_norm, act, d_vocab):
    torch.manual_seed(1)
    model = build_model(config(n_layers=n_layers, layer_norm=layer_norm, act=act,
                               d_vocab=d_vocab, n_classes=d_vocab - 1))
    random_layer_norms(model)
    tokens = torch.randint(0, d_vocab - 1, (40, 3))
    tokens[:, 2] = d_vocab - 1
    y = torch.randint(0, d_vocab - 1, (40,))
    F.cross_entropy(model(tokens).logits, y).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(reference_forward(model, tokens)[0], y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_cache_shapes_and_attention_rows_sum_to_one():
    model = build_model(config(n_layers=2))
    tokens = torch.randint(0, 11, (17, 3))
    out = model(tokens, return_cache=True)
    assert out.logits.shape == (17, 11)
    assert out.residuals.shape == (2, 17, 32)
    assert out.attention.shape == (2, 17, 4, 3)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 17, 4))
    assert model(tokens).residuals is None


def test_named_parameters_have_analysis_shapes():
    model = build_model(config())
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["W_E"] == (12, 32) and shapes["W_pos"] == (3, 32) and shapes["W_U"] == (32, 11)
    assert shapes["blocks.0.attn.W_Q"] == (4, 32, 8)
    assert shapes["blocks.0.attn.W_O"] == (4, 8, 32)
    assert shapes["blocks.1.mlp.W_in"] == (32, 64) and shapes["blocks.1.mlp.W_out"] == (64, 32)


def test_no_layer_norm_means_no_norm_parameters():
    model = build_model(config(n_layers=1, layer_norm=False))
    assert not [n for n, _ in model.named_parameters() if "ln" in n]


def test_bf16_autocast_stays_close_to_fp32():
    """train.precision=bf16 runs the same forward pass with bfloat16 matmuls: same function up
    to bf16 rounding (8 bits of mantissa)."""
    torch.manual_seed(2)
    model = build_model(config())
    tokens = torch.randint(0, 11, (64, 3))
    tokens[:, 2] = 11
    exact = model(tokens).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens).logits.float()
    assert not torch.equal(low, exact)  # the autocast really ran in bf16
    torch.testing.assert_close(low, exact, rtol=0.05, atol=0.05)


def test_state_dict_has_only_the_named_parameters():
    """The tables' helper buffers stay out of checkpoints."""
    model = build_model(config())
    assert list(model.state_dict()) == [n for n, _ in model.named_parameters()]


def test_features_are_what_the_unembedding_reads():
    model = build_model(config())
    tokens = torch.randint(0, 11, (20, 3))
    assert torch.equal(model.features(tokens) @ model.W_U, model(tokens).logits)
