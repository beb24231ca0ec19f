"""The fusable elementwise functions: eager by default, compiled versions once enabled."""

import torch

from tmrender.models import fused


def test_fusable_dispatches_to_the_compiled_version_only_when_enabled(monkeypatch):
    compiled_calls = []

    def fake_compile(fn, **kwargs):
        def run(*args):
            compiled_calls.append(kwargs)
            return fn(*args)

        return run

    monkeypatch.setattr(fused.torch, "compile", fake_compile)

    @fused.fusable
    def double(x):
        return 2 * x

    x = torch.ones(3)
    assert torch.equal(double(x), 2 * x) and not compiled_calls
    try:
        fused.enable_fusion()
        assert torch.equal(double(x), 2 * x)
        assert compiled_calls == [{"fullgraph": True, "dynamic": True}]
    finally:
        fused.enable_fusion(False)
    assert torch.equal(double(x), 2 * x) and len(compiled_calls) == 1  # eager again


def test_modulated_norm_is_wans_adaln():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    shift, scale = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    expected = torch.nn.functional.layer_norm(x, (8,), eps=1e-6) * (1 + scale) + shift
    assert torch.allclose(fused.modulated_norm(x, shift, scale, 1e-6), expected, atol=1e-6)


def test_rotate_pairs_keeps_norms_and_is_identity_at_angle_zero():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 2, 6)
    zeros = torch.zeros(4, 3)
    assert torch.equal(fused.rotate_pairs(x, zeros.cos(), zeros.sin()), x)
    angles = torch.randn(4, 3)
    y = fused.rotate_pairs(x, angles.cos(), angles.sin())
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
