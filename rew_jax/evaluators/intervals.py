"""Uncertainty of reported accuracies: binomial intervals, harmonic means, seeds.

Every figure a report prints carries its spread. An accuracy over n examples gets the Wilson
score interval (right at small n and near 0 or 100 %, where the normal approximation is
not). OVEN's harmonic mean of two accuracies is increasing in both, so the harmonic mean of
the two lower bounds and of the two upper bounds bound it: a conservative interval, since
the two accuracies rarely err in the same direction at once. Several seeds are summarised
by their mean and sample standard deviation.

Two models evaluated on the same questions are compared on their paired difference: a
bootstrap over the questions (resampled within each bucket, the same draw for both models)
gives the 95 % interval of the difference of their harmonic means. Non-overlapping
per-model intervals (`ahead`) are a far stricter test than the difference needs (about
p < 0.006 for two independent accuracies), and it ignores that both models answer the
same, equally hard questions.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

Z95 = 1.959963984540054  # The two-sided 95 % quantile of the standard normal.


class Interval(NamedTuple):
  """A percentage and its 95 % interval, in percent."""
  value: float
  low: float
  high: float

  def __str__(self) -> str:
    return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def wilson(correct: int, total: int, z: float = Z95) -> Interval:
  """Accuracy correct/total in percent with its Wilson score interval."""
  if total <= 0:
    raise ValueError("an accuracy needs at least one example")
  p = correct / total
  denom = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denom
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
  return Interval(100 * p, 100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def harmonic_mean(a: float, b: float) -> float:
  """OVEN's harmonic mean of two percentages (0 when either is 0)."""
  return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def harmonic_interval(a: Interval, b: Interval) -> Interval:
  """The harmonic mean of two accuracies, bounded by the harmonic means of their bounds."""
  return Interval(harmonic_mean(a.value, b.value), harmonic_mean(a.low, b.low),
                  harmonic_mean(a.high, b.high))


def ahead(a: Interval, b: Interval) -> bool:
  """True when `a` is above `b` beyond both intervals (a conservative test)."""
  return a.low > b.high


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  n = len(values)
  if not n:
    raise ValueError("no values")
  mean = sum(values) / n
  if n == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_hm_difference(a_seen: Sequence[bool], a_unseen: Sequence[bool],
                         b_seen: Sequence[bool], b_unseen: Sequence[bool], *,
                         samples: int = 4000, seed: int = 0) -> Interval:
  """HM(a) − HM(b) in points, with its 95 % paired-bootstrap (percentile) interval.

  Each argument holds one model's per-question correctness in one bucket, in the same
  question order for both models."""
  a_seen, a_unseen, b_seen, b_unseen = (np.asarray(x, bool) for x in (a_seen, a_unseen,
                                                                       b_seen, b_unseen))
  if a_seen.shape != b_seen.shape or a_unseen.shape != b_unseen.shape:
    raise ValueError("both models must answer the same questions")
  if not len(a_seen) or not len(a_unseen):
    raise ValueError("each bucket needs at least one question")
  rng = np.random.default_rng(seed)

  def hm(seen, unseen):  # Percentages [samples] → OVEN harmonic means.
    return np.where((seen > 0) & (unseen > 0), 2 * seen * unseen /
                    np.maximum(seen + unseen, 1e-9), 0.0)

  i = rng.integers(0, len(a_seen), (samples, len(a_seen)))
  j = rng.integers(0, len(a_unseen), (samples, len(a_unseen)))
  diff = (hm(100 * a_seen[i].mean(1), 100 * a_unseen[j].mean(1)) -
          hm(100 * b_seen[i].mean(1), 100 * b_unseen[j].mean(1)))
  value = harmonic_mean(100 * a_seen.mean(), 100 * a_unseen.mean()) - harmonic_mean(
      100 * b_seen.mean(), 100 * b_unseen.mean())
  low, high = np.percentile(diff, [2.5, 97.5])
  return Interval(float(value), float(low), float(high))
