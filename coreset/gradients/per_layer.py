"""One layer's per-sample gradient norms from its input and output gradient.

Each supported layer type reduces to weight-gradient patches (``A``: inputs, ``G``:
output gradients, laid out (b, groups, k|c, T)) plus a cheap bias gradient:

* Linear on (B, …, k): T = the flattened middle dims, bias grad = Σ_t g;
* Conv2d: ``A`` = the unfolded input patches with the layer's stride, padding (also
  'same'/non-zero modes, via explicit padding), dilation and groups; bias grad = Σ_t g.
  When materialising, ``dW_i`` comes from one grouped convolution weight-gradient call
  instead of ``G_i A_iᵀ`` (no patch copy);
* BatchNorm in eval mode: the normalisation uses running statistics, a fixed affine
  map per sample, so ``dγ_i = Σ_t g_i·x̂_i`` and ``dβ_i = Σ_t g_i`` exactly.

All arithmetic is float32 whatever the autocast dtype of the captured tensors (float64
for float64 models, which the tests use to check exactness beyond float32 rounding).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from coreset.gradients.ghost import gram_sq_norms, prefers_gram
from coreset.gradients.hooks import Layer
from coreset.gradients.materialize import NormParts, chunks, tensor_norms, wide

F32 = 4
Patches = Callable[[slice], tuple[torch.Tensor, torch.Tensor]]
Grads = Callable[[slice], torch.Tensor]


def layer_norms(
    layer: Layer, x: torch.Tensor, g: torch.Tensor, norms: frozenset[str], chunk_bytes: int
) -> tuple[NormParts | None, NormParts | None]:
    """Per-sample (weight, bias) norm contributions of ``layer``; None for a frozen/absent parameter."""
    m = layer.module
    if isinstance(m, nn.Linear):
        weight, bias = _linear(m, x, g, norms, chunk_bytes)
    elif isinstance(m, nn.Conv2d):
        weight, bias = _conv2d(m, x, g, norms, chunk_bytes)
    else:
        weight, bias = _batchnorm(m, x, g, norms, chunk_bytes)
    return (weight() if layer.weight else None), (bias() if layer.bias else None)


def _weight_norms(patches: Patches, grads: Grads, batch: int, k: int, c: int, t: int, groups: int,
                  norms: frozenset[str], chunk_bytes: int, input_bytes: int) -> NormParts:
    """Chunked weight-gradient norms: Gram form for l2 alone when cheaper, else materialise."""
    gram = norms == frozenset({"l2"}) and prefers_gram(k, c, t)
    scratch = (k + c) * t + 2 * t * t if gram else c * t + 2 * k * c
    per_sample = F32 * groups * scratch + input_bytes
    parts = []
    for sl in chunks(batch, per_sample, chunk_bytes):
        parts.append(NormParts(sq=gram_sq_norms(*patches(sl))) if gram else tensor_norms(grads(sl), norms))
    return NormParts.cat(parts)


def _linear(m: nn.Linear, x: torch.Tensor, g: torch.Tensor, norms: frozenset[str], chunk_bytes: int):
    b, k, c = x.shape[0], m.in_features, m.out_features
    xs, gs = x.reshape(b, -1, k), g.reshape(b, -1, c)
    t = xs.shape[1]

    def patches(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return wide(xs[sl]).transpose(1, 2), wide(gs[sl]).transpose(1, 2)

    def grads(sl: slice) -> torch.Tensor:
        a, gr = patches(sl)
        return gr @ a.transpose(1, 2)

    return (
        lambda: _weight_norms(patches, grads, b, k, c, t, 1, norms, chunk_bytes, 0),
        lambda: tensor_norms(gs.sum(1, dtype=_acc(gs)), norms),
    )


def _conv2d(m: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, norms: frozenset[str], chunk_bytes: int):
    b, groups = x.shape[0], m.groups
    kh, kw = m.kernel_size
    k, c, t = m.in_channels // groups * kh * kw, m.out_channels // groups, g.shape[2] * g.shape[3]

    def patches(sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        a = _unfold(m, _pad(m, wide(x[sl])))
        n = a.shape[0]
        return a.view(n, groups, k, t), wide(g[sl]).reshape(n, groups, c, t)

    def grads(sl: slice) -> torch.Tensor:
        return _conv2d_weight_grads(m, _pad(m, wide(x[sl])), wide(g[sl]))

    input_bytes = F32 * x[0].numel()
    return (
        lambda: _weight_norms(patches, grads, b, k, c, t, groups, norms, chunk_bytes, input_bytes),
        lambda: tensor_norms(g.sum((2, 3), dtype=_acc(g)), norms),
    )


def _pad(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` with ``m``'s padding applied (any padding mode, 'same' included)."""
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return F.pad(x, m._reversed_padding_repeated_twice, mode=mode)  # noqa: SLF001 - the padding Conv2d itself applies
    ph, pw = m.padding
    return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x


def _unfold(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``F.unfold`` of the padded ``x`` with ``m``'s geometry as one strided copy: (B, C·kh·kw, T).

    Same layout as ``F.unfold`` (channel-major, then kernel rows and columns) but several
    times faster on CPU, whose im2col is the bottleneck otherwise.
    """
    b, ch, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = m.kernel_size, m.dilation, m.stride
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s_b, s_c, s_h, s_w = x.stride()
    view = x.as_strided((b, ch, kh, kw, ho, wo), (s_b, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w), x.storage_offset())
    return view.reshape(b, ch * kh * kw, ho * wo)


def _conv2d_weight_grads(m: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients (b, c_out, c_in/groups, kh, kw) as one convolution weight-gradient.

    Folding the batch into the channels (groups = b·groups) makes the convolution
    library compute every sample's ``dW_i`` in one call (Rochette et al. 2019), with no
    unfolded-patch copy: about the cost of the ordinary batch weight gradient.
    """
    n, ch, h, w = x.shape
    c_out, ho, wo = g.shape[1:]
    weight = x.new_empty((n * c_out, ch // m.groups, *m.kernel_size))
    _, dw, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, n * c_out, ho, wo), x.reshape(1, n * ch, h, w), weight, None,
        m.stride, (0, 0), m.dilation, False, (0, 0), n * m.groups, (False, True, False),
    )
    return dw.view(n, c_out, *weight.shape[1:])


def _batchnorm(m: nn.Module, x: torch.Tensor, g: torch.Tensor, norms: frozenset[str], chunk_bytes: int):
    b, ch = x.shape[:2]
    shape = (1, ch) + (1,) * (x.dim() - 2)
    inv_std = torch.rsqrt(wide(m.running_var) + m.eps)
    shift = (-wide(m.running_mean) * inv_std).view(shape)  # x̂ = x·inv_std + shift, one fused op
    inv_std = inv_std.view(shape)

    def gamma() -> NormParts:
        parts = []
        for sl in chunks(b, 2 * F32 * x[0].numel(), chunk_bytes):
            xhat = torch.addcmul(shift, wide(x[sl]), inv_std)
            n = xhat.shape[0]
            dgamma = torch.einsum("bcs,bcs->bc", wide(g[sl]).reshape(n, ch, -1), xhat.reshape(n, ch, -1))
            parts.append(tensor_norms(dgamma, norms))
        return NormParts.cat(parts)

    return gamma, lambda: tensor_norms(g.reshape(b, ch, -1).sum(2, dtype=_acc(g)), norms)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32
