"""The per-sample gradient engine against a per-sample autograd loop (float64 reference)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreset.gradients import (
    GROUPS,
    NORMS,
    GradientSpec,
    PerSampleGradients,
    batch_bound,
    ghost,
    trainable_layers,
)
from coreset.models import InputSpec, build_model
from coreset.models.base import Classifier

ALL = GradientSpec(norms=NORMS, groups=GROUPS)
RTOL = 1e-4
F32_RTOL = 5e-3


def _prepare(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics, then eval mode."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.2)
            m.momentum = None  # cumulative average of the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(1.5 * torch.randn_like(x) + 0.3)
    return model.eval()


def _data(spec: InputSpec, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, spec.channels, spec.image_size, spec.image_size, generator=g)
    return x, torch.randint(0, spec.num_classes, (batch,), generator=g)


def _group_params(model: Classifier) -> dict[str, list[nn.Parameter]]:
    layers = trainable_layers(model)
    w = [layer.module.weight for layer in layers if layer.weight]
    b = [layer.module.bias for layer in layers if layer.bias]
    return {"last": [model.head.weight, model.head.bias], "weights": w, "biases": b, "all": w + b}


def _norm(ts: list[torch.Tensor], norm: str) -> float:
    flat = torch.cat([t.reshape(-1) for t in ts])
    return torch.linalg.vector_norm(flat, {"l1": 1, "l2": 2, "linf": math.inf}[norm]).item()


def reference(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-sample norms by a batch-of-one autograd loop in float64; also the per-sample grads."""
    m = copy.deepcopy(model).double().eval()
    groups = _group_params(m)
    params = list(dict.fromkeys(p for ps in groups.values() for p in ps))
    cols: dict[str, list[float]] = {f"{n}_{g}": [] for n in NORMS for g in GROUPS}
    summed = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        loss = F.cross_entropy(m(x[i:i + 1].double()), y[i:i + 1])
        grads = dict(zip(params, torch.autograd.grad(loss, params), strict=False))
        summed = [s + grads[p] for s, p in zip(summed, params, strict=False)]
        for n in NORMS:
            for g in GROUPS:
                cols[f"{n}_{g}"].append(_norm([grads[p] for p in groups[g]], n))
    index = {id(p): i for i, p in enumerate(params)}
    sums = {g: [summed[index[id(p)]] for p in groups[g]] for g in GROUPS}
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in cols.items()}, sums


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = RTOL) -> None:
    for col, ref in want.items():
        if col in got:
            torch.testing.assert_close(got[col].double(), ref, rtol=rtol, atol=1e-10,
                                       msg=lambda m, col=col: f"{col}: {m}")


MODELS = [
    ("mnist_cnn", InputSpec(1, 28, 10)),
    ("vgg16_bn", InputSpec(3, 32, 10)),
    ("resnet18_cifar", InputSpec(3, 32, 10)),
    ("resnet18", InputSpec(3, 32, 10)),
]


@pytest.mark.parametrize("name,spec", MODELS, ids=[m[0] for m in MODELS])
def test_every_norm_and_group_matches_per_sample_autograd(name: str, spec: InputSpec) -> None:
    torch.manual_seed(0)
    x, y = _data(spec)
    model = _prepare(build_model(name, spec), x)
    want, _ = reference(model, x, y)
    got = PerSampleGradients(model, ALL).compute(x, y)
    assert set(got) == {"loss", "correct", "err", "emb", *want}
    # float64: the engine's arithmetic, checked beyond float32 rounding (last-layer err is float32).
    got64 = PerSampleGradients(model.double(), ALL).compute(x.double(), y)
    _assert_close(got64, want)
    # float32: PyTorch's own float32 conv backward on CPU (oneDNN) moves a sample's activation
    # gradients by up to ~1e-3 relative depending on the batch it sits in, and a float32
    # batch-of-one autograd loop is off by ~1.5e-3 here; the engine adds nothing visible on top.
    _assert_close(got, want, rtol=F32_RTOL)


class _Odd(nn.Module):
    """Conv variants: stride/padding/dilation/bias, 'same' + reflect padding, groups, BN, Linear on 3D input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding="same", padding_mode="reflect", groups=2)
        self.c = nn.Conv2d(8, 6, (3, 2), stride=(1, 2), padding=(1, 0), bias=False)
        self.seq = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c(torch.tanh(self.b(torch.relu(self.bn(self.a(x))))))  # (B, 6, 8, 4)
        h = self.seq(h.flatten(2).relu().transpose(1, 2).reshape(len(x), -1, 24)[:, :, :24])  # 3D Linear
        return h.flatten(1)


def _odd_model() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    spec = InputSpec(3, 15, 7)
    x, y = _data(spec, batch=5)
    body = _Odd()
    dim = body(x).shape[1]
    return _prepare(Classifier(body, nn.Linear(dim, 7), spec), x), x, y


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "materialise"])
def test_conv_variants_both_l2_paths(gram: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = _odd_model()
    monkeypatch.setattr("coreset.gradients.per_layer.prefers_gram", lambda k, c, t: gram)
    got = PerSampleGradients(model, GradientSpec(norms=("l2",))).compute(x, y)
    _assert_close(got, reference(model, x, y)[0])


def test_conv_variants_l1_linf() -> None:
    model, x, y = _odd_model()
    got = PerSampleGradients(model, ALL).compute(x, y)
    _assert_close(got, reference(model, x, y)[0])


def test_mlp_with_batchnorm1d() -> None:
    torch.manual_seed(0)
    spec = InputSpec(1, 6, 4)
    x, y = _data(spec, batch=5)
    body = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh())
    model = _prepare(Classifier(body, nn.Linear(8, 4), spec), x)
    _assert_close(PerSampleGradients(model, ALL).compute(x, y), reference(model, x, y)[0])


def test_tiny_chunk_budget_gives_same_result() -> None:
    spec = InputSpec(1, 28, 10)
    x, y = _data(spec, batch=6)
    model = _prepare(build_model("mnist_cnn", spec), x)
    big = PerSampleGradients(model, ALL).compute(x, y)
    tiny = PerSampleGradients(model, GradientSpec(norms=NORMS, chunk_bytes=1)).compute(x, y)
    for col in ALL.columns:
        torch.testing.assert_close(tiny[col], big[col], rtol=1e-5, atol=0)


def test_last_layer_closed_form_and_factors() -> None:
    spec = InputSpec(1, 28, 10)
    x, y = _data(spec)
    model = _prepare(build_model("mnist_cnn", spec), x)
    want, _ = reference(model, x, y)
    only_last = PerSampleGradients(model, GradientSpec(norms=NORMS, groups=("last",))).compute(x, y)
    assert set(only_last) == {"loss", "correct", "err", "emb", "l1_last", "l2_last", "linf_last"}
    _assert_close(only_last, want)
    full = PerSampleGradients(model, ALL).compute(x, y)
    with torch.no_grad():
        logits, h = model.forward_with_features(x)
    torch.testing.assert_close(full["err"], torch.softmax(logits, 1) - F.one_hot(y, 10).float())
    torch.testing.assert_close(full["emb"], h)
    torch.testing.assert_close(full["loss"], F.cross_entropy(logits, y, reduction="none"))
    assert torch.equal(full["correct"], logits.argmax(1) == y)
    for k in ("err", "emb", "loss", "l2_last"):
        torch.testing.assert_close(only_last[k], full[k])


def test_batch_bound_matches_direct_computation() -> None:
    model, x, y = _odd_model()
    got = batch_bound(model, x, y, norms=NORMS)
    per_sample, sums = reference(model, x, y)
    for n in NORMS:
        for g in GROUPS:
            col = f"{n}_{g}"
            assert got[f"{col}_norm_of_sum"] == pytest.approx(_norm(sums[g], n), rel=RTOL)
            assert got[f"{col}_sum_of_norms"] == pytest.approx(per_sample[col].sum().item(), rel=RTOL)
            assert got[f"{col}_norm_of_sum"] <= got[f"{col}_sum_of_norms"] * (1 + 1e-6)


def test_engine_leaves_model_untouched() -> None:
    spec = InputSpec(1, 28, 10)
    x, y = _data(spec)
    model = build_model("mnist_cnn", spec).train()
    model.body[0].weight.requires_grad_(False)
    PerSampleGradients(model, GradientSpec()).compute(x, y)
    assert model.training
    assert not model.body[0].weight.requires_grad and model.head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_are_excluded() -> None:
    model, x, y = _odd_model()
    model.body.a.weight.requires_grad_(False)
    got = PerSampleGradients(model, GradientSpec(norms=("l2",))).compute(x, y)
    model.body.a.weight.requires_grad_(True)
    full = PerSampleGradients(model, GradientSpec(norms=("l2",))).compute(x, y)
    torch.testing.assert_close(got["l2_biases"], full["l2_biases"])
    assert (got["l2_weights"] < full["l2_weights"]).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"norms": ("l3",)}, "allowed: l1, l2, linf"),
    ({"groups": ("head",)}, "allowed: last, weights, biases, all"),
    ({"norms": "l2"}, "allowed: l1, l2, linf"),
    ({"norms": ()}, "allowed"),
    ({"chunk_bytes": 0}, "chunk_bytes"),
])
def test_bad_spec_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradientSpec(**kwargs)


def test_unsupported_layer_raises() -> None:
    spec = InputSpec(1, 8, 3)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.LayerNorm(64)), nn.Linear(64, 3), spec)
    with pytest.raises(ValueError, match="LayerNorm"):
        PerSampleGradients(model, GradientSpec())
    PerSampleGradients(model, GradientSpec(groups=("last",)))  # closed form needs no hooks


def test_shared_layer_raises() -> None:
    lin = nn.Linear(4, 4)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), lin, nn.Tanh(), lin), nn.Linear(4, 2),
                       InputSpec(1, 2, 2))
    with pytest.raises(RuntimeError, match="twice"):
        PerSampleGradients(model, GradientSpec()).compute(torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 0]))


def test_gram_choice_follows_cost() -> None:
    assert ghost.prefers_gram(k=4608, c=512, t=16)  # late ResNet conv
    assert not ghost.prefers_gram(k=576, c=64, t=1024)  # early ResNet conv
    assert ghost.prefers_gram(k=512, c=10, t=1)  # any Linear on flat inputs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_matches_reference(amp: bool) -> None:
    spec = InputSpec(3, 32, 10)
    x, y = _data(spec, batch=8)
    model = _prepare(build_model("resnet18_cifar", spec), x)
    want, _ = reference(model, x, y)
    got = PerSampleGradients(model.cuda(), GradientSpec(norms=NORMS, amp=amp)).compute(x.cuda(), y.cuda())
    got = {k: v.cpu() for k, v in got.items()}
    if amp:  # bfloat16 activations: a coarse check
        for col in ALL.columns:
            torch.testing.assert_close(got[col].double(), want[col], rtol=5e-2, atol=0)
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        _assert_close(got, want)
