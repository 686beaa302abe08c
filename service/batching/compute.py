"""The kernel call of a batch: the requests' inputs joined into one buffer (the one copy),
the layer applied, and each request's rows handed back (views, or written into its target)."""

from __future__ import annotations

import time

import numpy as np

from normserve.kernels import PreparedLayer
from normserve.kernels.buffers import POOL


def compute(layer: PreparedLayer, xs: list[np.ndarray], targets: list[np.ndarray | None]
             ) -> tuple[list[np.ndarray], float]:
    """Apply the layer to a batch: per-request outputs (views of one batch output, or the
    requests' own targets, filled) and the compute time.

    A request whose input the kernel can read in place and whose output has a target (one
    shared-memory region to another) runs as a kernel call of its own, straight from its
    input into its target: joining it would copy its bytes twice more (into the batch, out
    of it) to save a launch of a few microseconds. The others are joined into one call."""
    t0 = time.perf_counter()
    outs: dict[int, np.ndarray] = {}
    joined = []
    for i, (a, target) in enumerate(zip(xs, targets, strict=True)):
        if target is not None and _usable(a):
            outs[i] = layer.apply(a, out=target)
        else:
            joined.append(i)
    if joined:
        outs.update(zip(joined, _joined(layer, [xs[i] for i in joined],
                                        [targets[i] for i in joined]), strict=True))
    return [outs[i] for i in range(len(xs))], time.perf_counter() - t0


def _joined(layer: PreparedLayer, xs: list[np.ndarray], targets: list[np.ndarray | None]
            ) -> list[np.ndarray]:
    """Join the inputs into one batch buffer (the one copy), apply, return per-request views
    (or the requests' own targets, filled)."""
    if len(xs) == 1 and _usable(xs[0]):
        x = xs[0]
    else:  # pooled buffers: their pages are already mapped (fresh ones fault on first touch)
        rows = sum(a.shape[0] for a in xs)
        x = POOL.empty((rows, *xs[0].shape[1:]), xs[0].dtype)
        at = 0
        for a in xs:
            x[at:at + a.shape[0]] = a
            at += a.shape[0]
    if len(xs) == 1 and targets[0] is not None:  # alone: the kernel writes the target itself
        layer.apply(x, out=targets[0])
        return [targets[0]]
    out = POOL.empty(layer.output_shape(x.shape), x.dtype)
    layer.apply(x, out=out)
    outs, at = [], 0
    for a, target in zip(xs, targets, strict=True):
        rows = out[at:at + a.shape[0]]
        if target is not None:
            np.copyto(target, rows)
            rows = target
        outs.append(rows)
        at += a.shape[0]
    return outs


def _usable(a: np.ndarray) -> bool:
    """An array the kernels can read in place: an aligned, writable C array (a decoded JSON
    tensor). Binary tensors are read-only views of the body, of unknown alignment: copied."""
    return a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
