"""The reference attention against textbook softmax attention with the paper's dense mask."""

import pytest
import torch

from megastride.kernels import naive_attention, reference_attention, sparse_attention
from megastride.kernels import patterns as P
from megastride.kernels.reference import masked_sdpa_attention

PATTERNS = {
    "dense": P.same_for_all_heads(P.dense(), 2),
    "strided": P.same_for_all_heads(P.strided(16), 2),
    "fixed": P.same_for_all_heads(P.fixed(32, 8), 2),
    "multi_head": P.multi_head([P.fixed(16, 4), P.strided(16)], 2),
    "summary_only": P.same_for_all_heads(P.summary(32, 8), 2),  # has rows with no key
}


def _naive_softmax(q, k, v, mask):
    """softmax over allowed keys written out with exp/sum (rows without keys -> 0)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = torch.exp(scores - scores.max(-1, keepdim=True).values) * mask
    denom = weights.sum(-1, keepdim=True)
    return (weights / torch.where(denom == 0, 1.0, denom)) @ v.double()


@pytest.mark.parametrize("name", list(PATTERNS))
def test_reference_equals_naive_softmax(name):
    """Output equals softmax(QK^T/sqrt(d)) V under the token mask, in float64."""
    pattern = PATTERNS[name]
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 128, 16, dtype=torch.float64) for _ in range(3))
    layout = P.build_layout(pattern, 128, 16)
    out = reference_attention(q, k, v, layout, query_chunk=48)
    want = _naive_softmax(q, k, v, pattern.to_dense_mask(128))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(naive_attention(q, k, v, pattern.to_dense_mask(128)), want, rtol=1e-10, atol=1e-10)


def test_reference_gradients_match_naive():
    """dq, dk, dv through the chunked, recomputed reference equal autograd through the naive one."""
    pattern = PATTERNS["multi_head"]
    torch.manual_seed(1)
    leaves = [torch.randn(1, 2, 96, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    grad_out = torch.randn(1, 2, 96, 8, dtype=torch.float64)
    out = reference_attention(*leaves, pattern, query_chunk=40)
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(_naive_softmax(*leaves, pattern.to_dense_mask(96)), leaves, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_reference_lse_is_log_normaliser():
    """The returned log-sum-exp is log sum_j exp(s_ij) over allowed keys (-inf for empty rows)."""
    pattern = PATTERNS["summary_only"]
    q, k, v = (torch.randn(1, 2, 64, 8, dtype=torch.float64) for _ in range(3))
    _, lse = reference_attention(q, k, v, pattern, return_lse=True)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    want = torch.logsumexp(scores.masked_fill(~pattern.to_dense_mask(64), float("-inf")), -1)
    torch.testing.assert_close(lse, want)
    assert torch.isinf(lse[0, 0, 0]) and lse[0, 0, 0] < 0


@pytest.mark.parametrize("name", ["strided", "fixed", "summary_only"])
def test_cpu_training_path_equals_reference(name):
    """sparse_attention on CPU (masked SDPA, chunked) gives the reference's output and gradients."""
    pattern = PATTERNS[name]
    layout = P.build_layout(pattern, 128, 16)
    leaves = [torch.randn(2, 2, 128, 16, requires_grad=True) for _ in range(3)]
    out = sparse_attention(*leaves, layout)
    ref = reference_attention(*leaves, layout)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    want = torch.autograd.grad(ref.square().sum(), leaves)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked_sdpa_attention(*leaves, layout, query_chunk=32), ref, rtol=1e-5, atol=1e-5)


def test_shape_errors_are_clear():
    """Mismatched shapes and head counts are rejected with a message naming them."""
    layout = P.build_layout(PATTERNS["fixed"], 64, 16)
    q = torch.randn(1, 2, 64, 8)
    with pytest.raises(ValueError, match="heads"):
        reference_attention(torch.randn(1, 3, 64, 8), torch.randn(1, 3, 64, 8), torch.randn(1, 3, 64, 8), layout)
    with pytest.raises(ValueError, match="positions"):
        sparse_attention(q[:, :, :32], q[:, :, :32], q[:, :, :32], layout)
