"""A batch's model inputs: one tensor (images) or a mapping of tensors (text: input_ids, attention_mask, ...).

Methods, executors and backends handle inputs only through these helpers, so every method runs on either
kind. A tensor is passed to the model as ``model(x)``, a mapping as ``model(**inputs)``; every tensor of a
mapping has the batch as its first dimension. Targets stay one tensor (labels) with the batch first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: a batch's model inputs: a tensor, or keyword arguments of the model (tensors, batch first)
Inputs = Tensor | Mapping[str, Tensor]


def _tensors(inputs: Inputs) -> list[Tensor]:
    if isinstance(inputs, Tensor):
        return [inputs]
    if isinstance(inputs, Mapping) and inputs and all(isinstance(v, Tensor) for v in inputs.values()):
        return list(inputs.values())
    raise TypeError(
        f"batch inputs must be a tensor or a non-empty mapping of tensors, got {type(inputs).__name__}"
    )


def _apply(inputs: Inputs, fn: Any) -> Inputs:
    """``fn`` applied to the tensor, or to every tensor of the mapping (keys kept)."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    _tensors(inputs)
    return {key: fn(value) for key, value in inputs.items()}


def batch_size(inputs: Inputs) -> int:
    """Samples in the batch (the first dimension)."""
    return _tensors(inputs)[0].shape[0]


def device_of(inputs: Inputs) -> torch.device:
    """The device the inputs live on."""
    return _tensors(inputs)[0].device


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """The inputs on ``device``."""
    return _apply(inputs, lambda t: t.to(device))


def select(inputs: Inputs, index: Tensor | slice) -> Inputs:
    """The samples at ``index`` (a slice, index tensor or boolean mask over the batch)."""
    return _apply(inputs, lambda t: t[index])


def split(inputs: Inputs, count: int) -> list[Inputs]:
    """``count`` consecutive parts of near-equal size (``torch.tensor_split`` on the batch dimension)."""
    if isinstance(inputs, Tensor):
        return list(inputs.tensor_split(count))
    parts = {key: value.tensor_split(count) for key, value in inputs.items()}
    return [{key: pieces[k] for key, pieces in parts.items()} for k in range(count)]


def stack(batches: Sequence[Inputs]) -> Inputs:
    """Equal-shaped batches stacked on a new leading dimension (one per batch)."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(list(batches))
    return {key: torch.stack([b[key] for b in batches]) for key in first}


def signature(inputs: Inputs) -> tuple:
    """Keys, shapes and dtypes: equal signatures can be stacked."""
    if isinstance(inputs, Tensor):
        return (inputs.shape, inputs.dtype)
    return tuple((key, value.shape, value.dtype) for key, value in inputs.items())


def call_model(model: nn.Module, inputs: Inputs, params: dict[str, Tensor] | None = None) -> Tensor:
    """``model(x)`` or ``model(**inputs)``; at ``params`` (``torch.func.functional_call``) if given."""
    args, kwargs = ((inputs,), {}) if isinstance(inputs, Tensor) else ((), dict(inputs))
    if params:
        return torch.func.functional_call(model, params, args, kwargs, strict=False)
    return model(*args, **kwargs)
