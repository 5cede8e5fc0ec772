"""Tolerances derived from rounding, not tuned on one machine (issue #28): oneDNN picks other kernels, and so
other summation orders, on other instruction sets (AVX2, AVX-512, AMX), and a tuned tolerance fails on the next.

Two evaluations of one function in different orders are compared in float64, where each lies within
k * u64 * scale of the exact value, k * u32 * scale being the same computation's float32 rounding. Float32
results of these models keep digits (k * u32 < 1, else nothing float32 computes here could be tested), so
k * u64 < u64 / u32 = 2**-29 for each and the two lie within 2**-28 * scale. A real difference (a wrong mask,
position, cache entry or padding) is many orders larger.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
ORDER = 2 * U64 / U32  # = 2**-28: two float64 evaluations of one function, relative to its scale (above)


def double(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The floating tensors in float64, the others (token ids, masks) as they are."""
    return tuple(t.double() if t.is_floating_point() else t for t in tensors)


def order_tolerance(*tensors: torch.Tensor, scale: float | None = None) -> float:
    """ORDER times the scale of the results (their largest magnitude, unless given: 1 for probabilities)."""
    if scale is None:
        scale = max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)
    return ORDER * scale


def assert_same_function(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None,
                         msg: str | None = None) -> None:
    """``actual`` and ``expected`` are one function evaluated in two orders: integers equal, float64 within
    `order_tolerance` (float32 refused: its rounding is what differs between instruction sets)."""
    if not (actual.is_floating_point() or expected.is_floating_point()):
        assert actual.shape == expected.shape and torch.equal(actual, expected), msg
        return
    assert actual.dtype == expected.dtype == torch.float64, (actual.dtype, expected.dtype, msg)
    tolerance = order_tolerance(actual, expected, scale=scale)
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=0, msg=msg)
