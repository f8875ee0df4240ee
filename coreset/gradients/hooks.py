"""Which layers carry trainable parameters, and capturing their inputs and output gradients.

The engine runs one forward and one backward of the summed loss. A forward hook on each
parametrised layer keeps the layer's input and puts a hook on its output tensor; when
the backward reaches that output, the hook hands (layer, input, output-gradient) to a
callback, which turns them into per-sample norm contributions at once, so nothing but
the activations autograd keeps anyway stays alive. Parameters are frozen
(``requires_grad=False``) during the pass so autograd computes only gradients w.r.t.
activations and never the (batch-summed, useless here) parameter gradients.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

SUPPORTED = (nn.Linear, nn.Conv2d, _BatchNorm)


@dataclass(frozen=True)
class Layer:
    """A parametrised layer and which of its parameters (weight, bias) are trainable."""

    name: str
    module: nn.Module
    weight: bool
    bias: bool


def trainable_layers(model: nn.Module) -> list[Layer]:
    """Every module that directly owns a trainable parameter; raises for unsupported ones."""
    layers, unsupported = [], []
    for name, m in model.named_modules():
        own = {n for n, p in m.named_parameters(recurse=False) if p.requires_grad}
        if not own:
            continue
        if not isinstance(m, SUPPORTED) or own - {"weight", "bias"}:
            unsupported.append(f"{name or '<root>'} ({type(m).__name__}: {sorted(own)})")
            continue
        if isinstance(m, _BatchNorm) and m.running_mean is None:
            unsupported.append(f"{name} (BatchNorm without running stats has no per-sample gradient)")
            continue
        layers.append(Layer(name, m, "weight" in own, "bias" in own))
    if unsupported:
        raise ValueError(
            "per-sample gradients support only Linear, Conv2d and BatchNorm (with running stats) "
            f"parameters; unsupported: {'; '.join(unsupported)}"
        )
    return layers


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter (restored on exit)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


OnGrad = Callable[[Layer, torch.Tensor, torch.Tensor], None]


@contextmanager
def capture(layers: list[Layer], on_grad: OnGrad) -> Iterator[None]:
    """Call ``on_grad(layer, input, grad_output)`` during the backward, once per layer.

    Needs the model input to require grad (the engine sees to it). A layer applied twice
    in one forward (shared weights) would need the per-sample gradients of both uses
    summed before taking norms, which this scheme cannot do: it raises instead.
    """
    seen: set[str] = set()

    def forward_hook(layer: Layer) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if not out.requires_grad:  # parameters are frozen: only the input can carry a gradient
                raise RuntimeError(f"layer {layer.name!r} does not depend on the model input; unsupported")
            if layer.name in seen:
                raise RuntimeError(f"layer {layer.name!r} is applied twice in one forward (shared weights)")
            seen.add(layer.name)
            x = inputs[0].detach()

            def grad_hook(g: torch.Tensor) -> None:
                on_grad(layer, x, g)

            out.register_hook(grad_hook)

        return hook

    handles = [layer.module.register_forward_hook(forward_hook(layer)) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
