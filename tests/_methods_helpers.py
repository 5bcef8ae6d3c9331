"""Shared by the method tests: a seeded random batch and an elementwise closeness check.

ATOL/RTOL: fp32 comparisons against reference code that computes the same quantity in another
operation order; 1e-5 is ~100 fp32 ulps at the magnitudes used (|loss| <= ~10).
"""

from __future__ import annotations

import torch

ATOL = 1e-5
RTOL = 1e-5
IGNORE = -100


def _random(n_rows=6, n_classes=5, seed=0, scale=2.0, unlabeled=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_rows, n_classes, generator=g) * scale
    t = torch.randn(n_rows, n_classes, generator=g) * scale
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    for r in unlabeled:
        if r < n_rows:
            y[r] = IGNORE
    return s, t, y


def _close(got, want, atol=ATOL, rtol=RTOL):
    """|got − want| ≤ atol + rtol·|want| elementwise, as torch.testing.assert_close (whose first call
    costs ~1 s of lazy imports, too slow for these tests)."""
    got, want = torch.as_tensor(got).float(), torch.as_tensor(want).float()
    assert got.shape == want.shape, (got.shape, want.shape)
    assert bool(torch.isfinite(got).all()), got
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    assert not bool(bad.any()), (f"max |diff| {err.max().item():.3g} (atol {atol}, rtol {rtol})"
                                 f"\ngot  {got}\nwant {want}")
