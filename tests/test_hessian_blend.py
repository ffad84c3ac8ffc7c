"""GPTQ/AWQ regularization knobs: hessian_blend shrinks H's off-diagonal, max_alpha caps AWQ's grid."""

import torch

from tensorpress.compressors.awq_search import alpha_steps, search_scales_linear
from tensorpress.compressors.gptq_sweep import blend_diagonal, gptq_quantize
from tensorpress.formats.quantized import QuantScheme


def test_blend_keeps_diagonal_and_shrinks_rest():
    H = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert torch.equal(blend_diagonal(H, 0.0), H)
    assert torch.allclose(blend_diagonal(H, 0.5), torch.tensor([[2.0, 0.5], [0.5, 3.0]]))
    assert torch.allclose(blend_diagonal(H, 1.0), torch.diag(torch.diag(H)))
    assert torch.equal(H, torch.tensor([[2.0, 1.0], [1.0, 3.0]]))  # input untouched


def test_full_blend_gives_rtn():
    torch.manual_seed(0)
    X = torch.randn(256, 64)
    H = X.t() @ X
    W = torch.randn(8, 64)
    sch = QuantScheme(4, 32, True)
    a = gptq_quantize(W, H, sch, torch.float32, hessian_blend=1.0).dense
    b = gptq_quantize(W, torch.eye(64), sch, torch.float32).dense
    assert torch.equal(a, b)  # a diagonal H feeds no error forward: plain rounding


def test_alpha_cap():
    assert alpha_steps(20, 1.0) == 21 and alpha_steps(20, 0.5) == 11 and alpha_steps(20, 0.0) == 1
    torch.manual_seed(0)
    X = torch.randn(512, 64) * torch.linspace(0.1, 5, 64)
    found = search_scales_linear(
        [(torch.randn(16, 64), QuantScheme(3, 32, True))],
        X.t() @ X,
        X.abs().mean(0),
        torch.float32,
        20,
        False,
        max_alpha=0.3,
    )
    assert found.alpha <= 0.3
