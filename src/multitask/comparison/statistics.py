"""Means over seeds, their spread and intervals, and which rows the data cannot tell apart.

For values x_1..x_n of one row (one per seed): the mean x̄, the sample standard deviation
s = sqrt(Σ (x_i − x̄)² / (n − 1)), and for Δm% the 95% interval of the mean from Student's t
with n − 1 degrees of freedom, x̄ ± t_{0.975, n−1} · s / √n (with three seeds
t_{0.975, 2} = 4.303: three seeds bound a mean only loosely). Rows are ranked by mean Δm%; a row
whose interval overlaps the best row's is *tied* with it: these seeds do not show it worse.
Overlapping intervals are a conservative test (two means can differ significantly while their
intervals touch), which is the right side to err on before calling one method better.
With one seed there is no spread: s and the interval are None and a row ties only with an
equal mean.

The rows of a comparison share their seeds, and a seed can move every row alike (one draw of
the initial weights and batches suits every method better than another), which widens each
row's interval without telling rows apart. The *paired* difference (:func:`paired`) takes it
out: d_i = x_i − b_i per seed against the best row b, with the t interval of d̄. An interval of
d̄ wholly below zero says these seeds show the row worse than the best, even where the two
rows' own intervals overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """One quantity over seeds: the values (in seed order), mean, sample std, interval."""

    values: tuple[float, ...]
    mean: float
    std: float | None  # None with a single value
    low: float | None = None  # the interval of the mean, where one was asked for
    high: float | None = None

    def as_dict(self) -> dict[str, object]:
        fields: dict[str, object] = {"mean": self.mean, "std": self.std,
                                     "per_seed": list(self.values)}
        if self.low is not None:
            fields |= {"ci_low": self.low, "ci_high": self.high}
        return fields

    @property
    def interval(self) -> tuple[float, float]:
        """The interval, or the mean alone where there is none (one seed)."""
        if self.low is None or self.high is None:
            return self.mean, self.mean
        return self.low, self.high


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile (scipy's)."""
    from scipy import stats

    return float(stats.t.ppf(probability, dof))


def summarise(values: Sequence[float], interval: bool = False,
              confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample standard deviation and (``interval``) the t interval of the mean."""
    if not values:
        raise ValueError("summarise: no values (every experiment of the row failed?)")
    count = len(values)
    mean = math.fsum(values) / count
    if count < 2:
        return Summary(tuple(values), mean, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1))
    if not interval:
        return Summary(tuple(values), mean, std)
    half = t_quantile(0.5 + confidence / 2, count - 1) * std / math.sqrt(count)
    return Summary(tuple(values), mean, std, mean - half, mean + half)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def rank(delta_m: dict[str, Summary]) -> list[tuple[str, bool]]:
    """Row labels by mean Δm%, best first, each with whether it is tied with the best (the
    best itself counts as tied)."""
    order = sorted(delta_m, key=lambda label: -delta_m[label].mean)
    if not order:
        return []
    best = delta_m[order[0]].interval
    return [(label, overlaps(delta_m[label].interval, best)) for label in order]


def paired(values: Sequence[float], reference: Sequence[float],
           confidence: float = CONFIDENCE) -> Summary:
    """``values`` minus ``reference`` seed by seed (both in the same seed order), with the t
    interval of the mean difference (none with one seed)."""
    if len(values) != len(reference):
        raise ValueError(f"paired: {len(values)} values against {len(reference)}: the two rows "
                         "must be measured on the same seeds")
    return summarise([v - r for v, r in zip(values, reference, strict=True)], interval=True,
                     confidence=confidence)
