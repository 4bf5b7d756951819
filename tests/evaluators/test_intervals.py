"""Wilson intervals, the harmonic-mean bound and the seed summary, against known values."""

import math

import numpy as np
import pytest

from rew_jax.evaluators import intervals


def test_wilson_matches_the_textbook_values():
  # 8 of 10: the Wilson 95 % interval is [0.490, 0.943] (e.g. statsmodels' proportion_confint).
  iv = intervals.wilson(8, 10)
  assert iv.value == pytest.approx(80.0)
  assert iv.low == pytest.approx(49.02, abs=0.01) and iv.high == pytest.approx(94.33, abs=0.01)
  # 0 of 50: the interval starts at 0 and is not empty.
  iv = intervals.wilson(0, 50)
  assert iv.low == pytest.approx(0.0, abs=1e-9) and iv.high == pytest.approx(7.13, abs=0.01)
  with pytest.raises(ValueError):
    intervals.wilson(0, 0)


def test_wilson_covers_the_truth_about_95_percent_of_the_time():
  rng = np.random.default_rng(0)
  p, n, trials = 0.3, 60, 2000
  hits = sum(intervals.wilson(int(k), n).low <= 100 * p <= intervals.wilson(int(k), n).high
             for k in rng.binomial(n, p, trials))
  assert 0.91 < hits / trials < 0.98  # Wilson coverage oscillates around 95 % in n.


def test_harmonic_interval_bounds_and_the_verdict():
  a, b = intervals.wilson(40, 100), intervals.wilson(20, 100)
  hm = intervals.harmonic_interval(a, b)
  assert hm.value == pytest.approx(2 * 40 * 20 / 60)
  assert hm.low < hm.value < hm.high
  assert intervals.harmonic_mean(0.0, 50.0) == 0.0
  assert intervals.ahead(intervals.wilson(80, 100), intervals.wilson(40, 100))
  assert not intervals.ahead(intervals.wilson(45, 100), intervals.wilson(40, 100))


def test_mean_std():
  assert intervals.mean_std([1.0]) == (1.0, 0.0)
  mean, std = intervals.mean_std([1.0, 2.0, 3.0])
  assert mean == 2.0 and std == pytest.approx(1.0)
  assert math.isclose(intervals.mean_std([2.0, 2.0])[1], 0.0)


def test_paired_difference_interval_value_and_coverage():
  rng = np.random.default_rng(1)
  # Identical answers: the difference is exactly 0 with a zero-width interval.
  seen, unseen = rng.random(200) < 0.5, rng.random(200) < 0.4
  same = intervals.paired_hm_difference(seen, unseen, seen, unseen, samples=500)
  assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
  # A model right wherever the other is, and on 20 more seen questions: clearly ahead.
  better = seen.copy()
  better[np.flatnonzero(~seen)[:20]] = True
  d = intervals.paired_hm_difference(better, unseen, seen, unseen, samples=2000)
  hm = lambda s, u: 2 * s * u / (s + u)  # noqa: E731
  assert d.value == pytest.approx(hm(100 * better.mean(), 100 * unseen.mean()) -
                                  hm(100 * seen.mean(), 100 * unseen.mean()))
  assert 0 < d.low < d.value < d.high
  # Two independent models of equal accuracy: the interval covers 0 in ~95 % of trials,
  # (the percentile bootstrap runs slightly narrow at n = 200).
  covered = 0
  for t in range(100):
    r = np.random.default_rng(100 + t)
    a = [r.random(200) < 0.5, r.random(200) < 0.5]
    b = [r.random(200) < 0.5, r.random(200) < 0.5]
    covered += intervals.paired_hm_difference(*a, *b, samples=400, seed=t).low <= 0 <= \
        intervals.paired_hm_difference(*a, *b, samples=400, seed=t).high
  assert 88 <= covered <= 99
  with pytest.raises(ValueError, match="same questions"):
    intervals.paired_hm_difference(seen, unseen, seen[:10], unseen)
