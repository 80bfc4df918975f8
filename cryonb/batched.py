"""The pieces :func:`cryonb.train.fit_many` uses to train independent models together.

Public surface: :class:`GeneratorDropout`, :func:`own_dropout`, :class:`StackedStep`, :func:`batch_signature`.

Two ways to train N independent models at once, with the same per-model semantics (seed, data order,
augmentation stream, dropout stream, optimiser state, schedule, best checkpoint, resume):

- **threads** (CPU): each model's epoch runs on its own worker thread with one intra-op thread, so the
  models fill the cores without OpenMP barriers between them. Bit-identical to training each model alone
  with one torch thread, because every random draw comes from the model's own generators
  (:class:`GeneratorDropout` draws exactly what ``F.dropout`` draws from torch's global generator).
- **vmap** (GPU): one step for all models of a group: their parameters are stacked
  (``torch.stack``, so gradients flow back to each model's own ``.grad``), the loss is
  ``vmap(functional_call(...))`` over the model dimension (convolutions become ``groups=N`` convolutions,
  BatchNorm's batched running statistics become per-model channels), and one backward covers the group.
  Kernel launches per step no longer grow with N, which is what a launch-bound batch-16 step on a GPU needs.

Why threads on CPU: measured on this project's 2-core CPU (torch 2.13, oneDNN 3.12), CPU milliseconds per
model-step (fwd + bwd, one intra-op thread, 8 models, batch 16, 32³; ``benchmarks/bench_train.py
--compare-batching``, load average 1–2)::

    RB3D width / COS-Net base         4      8     16   COS-Net 4
    one model at a time             175    277    517     548
      in channels_last_3d           160    216    398     452
    vmap (groups=N kernels)         236    411    708    1101
    hand-written channel groups     217    386    624       –
      in channels_last_3d           152    278    540       –

oneDNN's grouped 3-D convolutions are no faster per group than the same small convolution run alone (its
grouped kernels loop over groups with the same tiny per-group channel counts, plus layout copies), so on CPU
stacking models into one kernel buys nothing (the one exception, width 4 in channels-last, is 5 % and
not at the quick profile's width 8); running models side by side on separate cores does, and needs no
OpenMP barrier between them. vmap and the hand-written grouped network end in the same kernels; vmap is kept
because it batches any model (RB3D, COS-Net, the SSL wrappers) without a second implementation of each.
The vmap path is coded device-agnostically and tested on CPU; its GPU speed is unmeasured (no GPU here).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_flatten, tree_map

from cryonb.errors import CryoNBError

__all__ = ["GeneratorDropout", "own_dropout", "StackedStep", "batch_signature"]


def _dropout_noise(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    # what ATen's CPU dropout does (empty_like → bernoulli_(1 − p) → div_(1 − p)), from ``generator``
    return torch.empty_like(x).bernoulli_(1 - p, generator=generator).div_(1 - p)


class GeneratorDropout(nn.Module):
    """``nn.Dropout`` whose mask comes from its own generator instead of torch's global one.

    On CPU the output is bit-identical to ``F.dropout`` with the global generator in the same state as
    ``generator``: the same ``bernoulli_`` call on a tensor of the same shape, the same scaling. That is what
    lets models train side by side (threads) and still each get the dropout masks they would get alone.
    """

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = float(p), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        if self.p == 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return x * _dropout_noise(x, self.p, self.generator)


def _dropouts(model: nn.Module) -> list[tuple[nn.Module, str, nn.Dropout]]:
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.dropout._DropoutNd):
                if type(child) is not nn.Dropout or child.inplace:
                    raise CryoNBError(f"{type(child).__name__} (inplace={child.inplace}) in {type(model).__name__}: batched training "
                                      "supports nn.Dropout(inplace=False) only")
                found.append((parent, name, child))
    return found


@contextlib.contextmanager
def own_dropout(model: nn.Module, generator: torch.Generator) -> Iterator[nn.Module]:
    """Within the block every ``nn.Dropout`` of ``model`` draws from ``generator``; restored afterwards."""
    found = _dropouts(model)
    swapped = [GeneratorDropout(d.p, generator).train(d.training) for _, _, d in found]
    for (parent, name, _), new in zip(found, swapped):
        setattr(parent, name, new)
    try:
        yield model
    finally:
        for (parent, name, old), new in zip(found, swapped):
            setattr(parent, name, old.train(new.training))


class _StackedNoise(torch.autograd.Function):
    """Dropout noise for a vmapped model: one draw per model, each from that model's generator.

    Only meaningful under ``vmap``; its batching rule (the ``vmap`` staticmethod) sees the physical
    ``(N, ...)`` tensor and draws model i's noise from ``generators[i]``, so each model's mask is the one it
    would draw alone with a generator in the same state.
    """

    @staticmethod
    def forward(x: torch.Tensor, p: float, generators: Sequence[torch.Generator]) -> torch.Tensor:  # type: ignore[override]
        raise CryoNBError("stacked dropout runs only inside fit_many's vmapped step")

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        return None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:  # type: ignore[override]
        return None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, p: float,
             generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, int]:
        x = x.movedim(in_dims[0], 0)
        if len(generators) != x.shape[0]:
            raise CryoNBError(f"stacked dropout: {x.shape[0]} models but {len(generators)} generators")
        return torch.stack([_dropout_noise(x[i], p, g) for i, g in enumerate(generators)]), 0


class _StackedDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generators: Sequence[torch.Generator] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.numel() == 0:
            return x
        if self.p == 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return x * _StackedNoise.apply(x, self.p, self.generators)


class _LossModule(nn.Module):
    """Calls ``loss_fn(inner, batch)`` inside ``functional_call``, so every method of ``inner`` the loss uses
    (``forward``, ``score``, ``loss``...) sees the stacked weights; returns the outputs and the modules'
    ``_pending`` step state (MoCo's keys), which ``after_step`` consumes per model."""

    def __init__(self, inner: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.inner, self.loss_fn = inner, loss_fn

    def forward(self, batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        outputs = self.loss_fn(self.inner, batch)
        pending = {}
        for name, module in self.inner.named_modules():
            value = getattr(module, "_pending", None)
            if value is not None:
                pending[name] = value
                module._pending = None
        return outputs, pending


def batch_signature(batch: Any) -> tuple:
    """Shapes and dtypes of a batch's tensors: models whose batches share it can be stacked into one step."""
    leaves, spec = tree_flatten(batch)
    return (str(spec), tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in leaves))


class StackedStep:
    """The forward pass of several models of one architecture as one vmapped call.

    Parameters
    ----------
    template : a model of the architecture (copied; its own weights are never used).
    loss_fn : ``loss_fn(model, batch) -> dict`` with a scalar ``"loss"``, free of side effects on the model
        except BatchNorm statistics and a ``_pending`` attribute (read back per model).
    """

    def __init__(self, template: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]]) -> None:
        inner = copy.deepcopy(template)
        self._dropouts: list[_StackedDropout] = []
        for parent, name, old in _dropouts(inner):
            new = _StackedDropout(old.p)
            setattr(parent, name, new)
            self._dropouts.append(new)
        self.module = _LossModule(inner, loss_fn)
        self.param_names = [n for n, _ in template.named_parameters()]
        self.buffer_names = [n for n, _ in template.named_buffers()]
        self._shapes = {n: t.shape for n, t in [*template.named_parameters(), *template.named_buffers()]}

    def check(self, index: int, model: nn.Module) -> None:
        """Raise unless ``model`` has the template's parameters and buffers (names and shapes)."""
        mine = {n: t.shape for n, t in [*model.named_parameters(), *model.named_buffers()]}
        if mine != self._shapes:
            diff = sorted(set(mine.items()) ^ set(self._shapes.items()), key=str)[:3]
            raise CryoNBError(f"fit_many executor='vmap': model {index} differs from model 0 in {diff}; vmap stacks models of one "
                              "architecture (use executor='threads' to train different ones together)")

    def __call__(self, models: Sequence[nn.Module], batches: Sequence[Any], generators: Sequence[torch.Generator],
                 training: bool = True) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Forward ``models[i]`` on ``batches[i]``; returns outputs stacked on dim 0 and each model's pending state.

        BatchNorm statistics are written back into each model's buffers; gradients of the outputs flow to
        each model's own parameters.
        """
        params = {f"inner.{n}": torch.stack([m.get_parameter(n) for m in models]) for n in self.param_names}
        buffers = {f"inner.{n}": torch.stack([m.get_buffer(n) for m in models]).detach() for n in self.buffer_names}
        versions = {n: t._version for n, t in params.items()}
        stacked = tree_map(lambda *ts: torch.stack(ts) if isinstance(ts[0], torch.Tensor) else ts[0], *batches)
        for d in self._dropouts:
            d.generators = list(generators)
        self.module.train(training)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], batch: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            return functional_call(self.module, {**p, **b}, (batch,), tie_weights=False)

        outputs, pending = vmap(one, randomness="error")(params, buffers, stacked)
        if any(t._version != versions[n] for n, t in params.items()):
            raise CryoNBError("fit_many executor='vmap': the loss changes parameters in place; use executor='threads'")
        with torch.no_grad():
            for n in self.buffer_names:
                for i, m in enumerate(models):
                    m.get_buffer(n).copy_(buffers[f"inner.{n}"][i])
        per_model = [tree_map(lambda t, i=i: t[i], pending) for i in range(len(models))]
        return outputs, per_model
