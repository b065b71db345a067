"""Flat buffers: a method's vectors (parameters, points, gradients) as one contiguous tensor each.

Opt-in (``FastPath(flat_buffers=True)``, ``--flat-buffers``). :func:`flatten_parameters` moves a method's
trainable parameters into one buffer: each ``p.data`` becomes a view of it, in ``method.params`` order and
in the parameter's own memory format (``channels_last`` included). From then on

* ``method.current_point()`` is a :class:`FlatVector` over that buffer (no copy);
* each gradient job differentiates with respect to ONE flat leaf, so its gradient comes back as a
  FlatVector (autograd concatenates the per-parameter gradients once, at the end of the backward);
* the vector helpers of :mod:`sampa.optim.tensors` (norms, dots, sums, scalings) run one kernel on the
  buffers when every operand is a FlatVector of the method's layout, and per-tensor foreach kernels
  otherwise (a plain list, e.g. SAMPa's look-ahead point, is flattened by the job that evaluates it);
* the two-device backend exchanges a gradient without gathering its pieces, and the fused backend
  stacks two points with one ``torch.stack``.

The math is unchanged; a norm or dot over one buffer sums in another order than per-tensor kernels do
(round-off). The base optimizer still steps per tensor (its foreach or fused kernels), on views.

A FlatVector is a read-only sequence of per-parameter views, made on first use only. It is deliberately
not a ``list``: torch's multi-tensor functions refuse it with a TypeError (never a silently empty list),
so code that hands a vector to them writes ``list(v)``. Checkpoints store plain lists of tensors
(:func:`plain`), and :meth:`sampa.optim.contract.Method.load_vector` makes them flat again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, overload

import torch
from torch import Tensor


class FlatLayout:
    """Where each tensor of a parameter-aligned list lives in a flat buffer (sizes, shapes, memory orders)."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.sizes = [t.numel() for t in tensors]
        self.orders = [_memory_order(t) for t in tensors]
        self.numel = sum(self.sizes)
        # per tensor: its shape in memory order, and the permutation back to its own dimensions (None: none)
        self._memory_shapes = [
            tuple(t.shape[d] for d in order) for t, order in zip(tensors, self.orders, strict=True)
        ]
        self._back = [
            None if order == tuple(range(len(order))) else tuple(order.index(d) for d in range(len(order)))
            for order in self.orders
        ]

    def __len__(self) -> int:
        return len(self.sizes)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-tensor views of ``flat`` (shape ``(..., numel)``; leading dimensions are kept), each with its
        tensor's shape and memory format. Differentiable: gradients flow back as one concatenation."""
        lead = tuple(flat.shape[:-1])
        pieces = flat.split(self.sizes, dim=-1)
        views = []
        for piece, shape, back in zip(pieces, self._memory_shapes, self._back, strict=True):
            view = piece.view((*lead, *shape))
            if back is not None:  # from memory order back to the tensor's dimensions
                view = view.permute(*range(len(lead)), *(len(lead) + d for d in back))
            views.append(view)
        return views

    def pieces(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """``tensors`` (any strides) as 1-d pieces in this layout's memory order (views where possible);
        their concatenation is the flat buffer."""
        if len(tensors) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} tensors for this flat layout, got {len(tensors)}")
        return [t.detach().permute(o).reshape(-1) for t, o in zip(tensors, self.orders, strict=True)]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """A new buffer holding ``tensors`` (any strides) in this layout."""
        return torch.cat(self.pieces(tensors))


class FlatVector(Sequence[Tensor]):
    """A parameter-aligned vector stored as one buffer ``flat`` in ``layout`` (read-only, views on demand)."""

    __slots__ = ("_views", "flat", "layout")

    def __init__(self, flat: Tensor, layout: FlatLayout) -> None:
        if flat.shape != (layout.numel,):
            shape = tuple(flat.shape)
            raise ValueError(f"a flat vector needs a 1-d buffer of {layout.numel} elements, not {shape}")
        self.flat, self.layout = flat, layout
        self._views: list[Tensor] | None = None

    def like(self, flat: Tensor) -> FlatVector:
        """Another vector in the same layout."""
        return FlatVector(flat, self.layout)

    def _all(self) -> list[Tensor]:
        if self._views is None:
            self._views = self.layout.views(self.flat)
        return self._views

    def __len__(self) -> int:
        return len(self.layout)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        return self._all()[index]

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._all())

    def __repr__(self) -> str:
        flat = self.flat
        return f"FlatVector({len(self)} tensors, {flat.numel()} elements, {flat.dtype}, {flat.device})"


def shared_layout(*vectors: Sequence[Tensor]) -> FlatLayout | None:
    """The layout all ``vectors`` share as FlatVectors, or None (then work per tensor)."""
    first = vectors[0]
    if not isinstance(first, FlatVector):
        return None
    same = all(isinstance(v, FlatVector) and v.layout is first.layout for v in vectors[1:])
    return first.layout if same else None


def as_flat(vector: Sequence[Tensor], layout: FlatLayout) -> Tensor:
    """``vector``'s buffer in ``layout``: its own if it is a FlatVector of that layout, else a copy."""
    if isinstance(vector, FlatVector) and vector.layout is layout:
        return vector.flat
    return layout.flatten(vector)


def plain(obj: Any) -> Any:
    """``obj`` with every FlatVector replaced by a list of its views (checkpoints hold plain lists)."""
    if isinstance(obj, FlatVector):
        return list(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj)
    return obj


class FlatParameters:
    """A method's trainable parameters as views of one buffer (see :func:`flatten_parameters`)."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        dtypes = {(p.dtype, p.device) for p in params}
        if len(dtypes) != 1:
            found = ", ".join(sorted(f"{d} on {dev}" for d, dev in dtypes))
            raise ValueError(f"flat buffers need one parameter dtype and device, got {found}")
        self.layout = FlatLayout(params)
        self.buffer = self.layout.flatten(params)
        self._params = list(params)
        with torch.no_grad():
            for p, view in zip(self._params, self.layout.views(self.buffer), strict=True):
                p.data = view

    def point(self) -> FlatVector:
        """The parameters as a FlatVector (the buffer itself, no copy)."""
        if not torch.compiler.is_compiling() and not self._in_buffer():
            raise RuntimeError(
                "the parameters no longer live in the flat buffer (moved after flatten_parameters, e.g. by "
                "model.to()); call flatten_parameters(method) again"
            )
        return FlatVector(self.buffer, self.layout)

    def _in_buffer(self) -> bool:
        """Whether the parameters still live in the buffer (a host-side pointer check)."""
        return self._params[0].untyped_storage().data_ptr() == self.buffer.untyped_storage().data_ptr()


class _HasParameters(Protocol):
    params: list[Tensor]
    flat: FlatParameters | None


def flatten_parameters(method: _HasParameters) -> FlatParameters:
    """Move ``method``'s trainable parameters into one flat buffer (values, memory formats, parameter
    identities and optimizer state unchanged); the method then works on flat vectors (module docstring).

    Call it after moving the model to its device and memory format, and before loading method state
    from a checkpoint (so saved vectors come back flat).
    """
    method.flat = FlatParameters(method.params)
    return method.flat


def _memory_order(t: Tensor) -> tuple[int, ...]:
    """The dimensions of ``t`` from outermost to innermost in memory (identity when contiguous)."""
    if t.is_contiguous():
        return tuple(range(t.dim()))
    order = tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d), d)))
    if not t.permute(order).is_contiguous():  # overlapping or with gaps: store it contiguous
        return tuple(range(t.dim()))
    return order
