"""The kernel call of a batch: the requests' inputs joined into one buffer each (the one
copy), the layer applied (``apply_all``: every input and output of the layer in one call),
and each request's rows of every output handed back (views, or written into its targets)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from normserve.kernels import PreparedLayer
from normserve.kernels.buffers import POOL

#: A request's inputs (one array per ``layer.input_names``), or its outputs.
Tensors = tuple[np.ndarray, ...]
#: A request's output targets (shared memory), one per output (None: none for that one).
Targets = tuple[np.ndarray | None, ...]


def compute(layer: PreparedLayer, xs: Sequence[Tensors | np.ndarray],
            targets: Sequence[Targets | np.ndarray | None]
            ) -> tuple[list[Tensors | np.ndarray], float]:
    """Apply the layer to a batch: per request its outputs (views of one batch output per
    output name, or the request's own targets, filled), and the compute time.

    Each request gives its inputs as a tuple (one array per input name, rows aligned) and
    its targets as a tuple (or None), and gets its outputs as a tuple; a bare array in (one
    input, its target a bare array too) gets the first output back as a bare array.

    A request whose inputs the kernel can read in place and whose every output has a target
    (one shared-memory region to another) runs as a kernel call of its own, straight from
    its inputs into its targets: joining it would copy its bytes twice more (into the batch,
    out of it) to save a launch of a few microseconds. The others are joined into one call.
    A request alone in its batch (light load), or the only one left to join, is not joined:
    see ``_alone``."""
    t0 = time.perf_counter()
    bare = type(xs[0]) is not tuple
    if len(xs) == 1:
        target = targets[0]
        if bare:
            out = _alone(layer, (xs[0],), None if target is None else (target,))[0]
        else:
            out = _alone(layer, xs[0], target)
        return [out], time.perf_counter() - t0
    if bare:
        xs = [(x,) for x in xs]
        targets = [None if t is None else (t,) for t in targets]
    outs: list[Tensors | None] = [None] * len(xs)
    joined = []
    for i, (ins, target) in enumerate(zip(xs, targets, strict=True)):
        if _complete(target, layer) and _all_usable(ins):
            outs[i] = layer.apply_all(ins, target)
        else:
            joined.append(i)
    if len(joined) == 1:
        i = joined[0]
        outs[i] = _alone(layer, xs[i], targets[i])
    elif joined:
        for i, out in zip(joined, _joined(layer, [xs[i] for i in joined],
                                          [targets[i] for i in joined]), strict=True):
            outs[i] = out
    if bare:
        return [out[0] for out in outs], time.perf_counter() - t0
    return outs, time.perf_counter() - t0


def _alone(layer: PreparedLayer, ins: Tensors, target: Targets | None) -> Tensors:
    """A batch of one request: the kernel reads its inputs (a copy of those it cannot read
    in place) and writes its outputs, into its targets where it has them: no batch
    buffers to fill and split (they cost a few microseconds of Python per batch, a
    sizeable part of a lone small request). Outputs without a target are the layer's
    own (pooled) arrays, copied into the targets there are."""
    if not _all_usable(ins):
        ins = tuple(a if _usable(a) else _copy(a) for a in ins)
    if _complete(target, layer):
        return layer.apply_all(ins, target)
    outs = layer.apply_all(ins)
    if target is None:
        return outs
    return tuple(_fill(t, rows) for t, rows in zip(target, outs, strict=True))


def _copy(a: np.ndarray) -> np.ndarray:
    x = POOL.empty(a.shape, a.dtype)
    np.copyto(x, a)
    return x


def _complete(target: Targets | None, layer: PreparedLayer) -> bool:
    """Whether every output of the layer has a target."""
    return target is not None and len(target) == len(layer.output_names) and \
        all(t is not None for t in target)


def _joined(layer: PreparedLayer, xs: list[Tensors], targets: list[Targets | None]
            ) -> list[Tensors]:
    """Join each input of two or more requests into one batch buffer (the one copy, rows
    aligned across inputs), apply, return per-request views of every output (or the
    requests' own targets, filled). Pooled buffers: their pages are already mapped (fresh
    ones fault on first touch)."""
    rows = sum(x[0].shape[0] for x in xs)
    ins = (_join([x[0] for x in xs], rows),) if len(xs[0]) == 1 else \
        tuple(_join([x[k] for x in xs], rows) for k in range(len(xs[0])))
    first = ins[0]
    shape = layer.output_shape(first.shape)
    one = len(layer.output_names) == 1  # the common case, without generators
    batch_outs = (POOL.empty(shape, first.dtype),) if one else \
        tuple(POOL.empty(shape, first.dtype) for _ in layer.output_names)
    layer.apply_all(ins, batch_outs)
    outs, at = [], 0
    for x, target in zip(xs, targets, strict=True):
        n = x[0].shape[0]
        mine = (batch_outs[0][at:at + n],) if one else \
            tuple(out[at:at + n] for out in batch_outs)
        if target is not None:
            mine = tuple(_fill(t, rows) for t, rows in zip(target, mine, strict=True))
        outs.append(mine)
        at += n
    return outs


def _join(parts: list[np.ndarray], rows: int) -> np.ndarray:
    x = POOL.empty((rows, *parts[0].shape[1:]), parts[0].dtype)
    return np.concatenate(parts, out=x)


def _fill(target: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    if target is None:
        return rows
    np.copyto(target, rows)
    return target


def _all_usable(arrays: Tensors) -> bool:
    if len(arrays) == 1:  # without all()'s generator: the one-input case is the hot one
        return _usable(arrays[0])
    return all(_usable(a) for a in arrays)


def _usable(a: np.ndarray) -> bool:
    """An array the kernels can read in place: an aligned, writable C array (a decoded JSON
    tensor). Binary tensors are read-only views of the body, of unknown alignment: copied."""
    return a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
