"""Claims about a recipe, not about one run: results over independently trained networks.

A training run is random (initial weights, the pairs it draws) and its floating-point sums
differ between processors, so a number measured on one network says little about the recipe
that made it. The chapters therefore measure every headline claim on an *ensemble*: the same
recipe trained with each seed of `helpers.train.ENSEMBLE_SEEDS` (`load_ensemble`), evaluated
on the same pairs.

`over_seeds` summarises such a measurement, values [S seeds, P pairs], by

* the value of each seed (the mean over its pairs), and their range;
* the grand mean, with a 95% interval from a two-level bootstrap that resamples the seeds
  *and* the distinct moving images (each with all of its pairs), independently: the interval
  covers what another training run and other test images would give, not just other pairs
  of the same images;
* how many distinct moving images lie behind it.

    summary = over_seeds(became_a_five.float(), moving_index)      # [5, 256], [256]
    f"{summary}"   # '0.16 [0.10, 0.23] (seeds 0.09–0.27)'

A measurement that rests on a judge (a frozen classifier) is made with several judges, values
[J judges, S seeds, P pairs], and `over_judges` resamples the judges as well: its interval covers
what another judge, another training run and other test images would give.

    summary = over_judges(became_a_five.float(), moving_index)     # [3, 5, 256], [256]
    f"{summary}"   # '0.16 [0.08, 0.25] (seeds 0.09–0.27; judges 0.11–0.21)'
"""

from typing import NamedTuple

import torch


class SeedSummary(NamedTuple):
    """A mean over seeds and pairs, its per-seed values and a seeds × images bootstrap interval.

    per_seed: one value per seed (the mean over that seed's pairs), in seed order
    estimate: the mean of `per_seed`
    low, high: the two-level bootstrap interval (seeds and distinct moving images, resampled independently)
    images: the number of distinct moving images; pairs: the number of pairs per seed
    """

    per_seed: tuple
    estimate: float
    low: float
    high: float
    images: int
    pairs: int

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def spread(self) -> tuple:
        """(lowest, highest) value over the seeds."""
        return min(self.per_seed), max(self.per_seed)

    def holds_in(self, condition) -> int:
        """In how many seeds `condition(value)` is true, e.g. `summary.holds_in(lambda v: v > 0.05)`."""
        return sum(bool(condition(value)) for value in self.per_seed)

    def __format__(self, spec: str) -> str:
        """'0.16 [0.10, 0.23] (seeds 0.09–0.27)'; the spec applies to each number (default '.2f')."""
        spec = spec or ".2f"
        low, high = self.spread
        interval = f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"
        return interval if self.seeds == 1 else f"{interval} (seeds {low:{spec}}–{high:{spec}})"

    def __str__(self) -> str:
        return format(self)


def over_seeds(
    values: torch.Tensor, images: torch.Tensor, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> SeedSummary:
    """Summarise `values` [S, P] (one row per trained network, one column per pair; the same
    pairs for every network) whose pair p has moving image `images[p]` (any integer id).

    The interval is a percentile bootstrap of the grand mean in which each resample draws S
    seeds with replacement and, independently, as many distinct moving images as there are,
    with replacement, each bringing all of its pairs (a crossed two-level bootstrap, seeded).
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 2 or values.shape[0] < 2 or values.shape[1] < 2:
        raise ValueError(f"values must be [seeds >= 2, pairs >= 2], got shape {list(values.shape)}")
    return _summarise(values, images, level, resamples, seed)


class JudgedSummary(NamedTuple):
    """`SeedSummary`'s fields for a measurement made with several judges: per_seed is each seed's
    value averaged over the judges, per_judge each judge's averaged over the seeds; low, high is a
    bootstrap over judges, seeds and distinct moving images (`over_judges`)."""

    per_seed: tuple
    per_judge: tuple
    estimate: float
    low: float
    high: float
    images: int
    pairs: int

    seeds = SeedSummary.seeds
    spread = SeedSummary.spread
    holds_in = SeedSummary.holds_in

    @property
    def judge_spread(self) -> tuple:
        """(lowest, highest) value over the judges."""
        return min(self.per_judge), max(self.per_judge)

    def __format__(self, spec: str) -> str:
        """'0.16 [0.08, 0.25] (seeds 0.09–0.27; judges 0.11–0.21)'; the spec applies to each number."""
        spec = spec or ".2f"
        (low, high), (judge_low, judge_high) = self.spread, self.judge_spread
        parts = [f"seeds {low:{spec}}–{high:{spec}}"] if self.seeds > 1 else []
        parts.append(f"judges {judge_low:{spec}}–{judge_high:{spec}}")
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}] ({'; '.join(parts)})"

    def __str__(self) -> str:
        return format(self)


def over_judges(
    values: torch.Tensor, images: torch.Tensor, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> JudgedSummary:
    """Summarise `values` [J, S, P]: J ≥ 2 judges (frozen classifiers, or any instrument that
    scores the same pairs), S seeds (S = 1 for a method without seeds), P pairs with moving images
    `images` [P]. The interval is a crossed three-level percentile bootstrap: each resample draws
    J judges, S seeds (when S > 1) and the distinct moving images, each independently and with
    replacement."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 3 or values.shape[0] < 2 or values.shape[2] < 2:
        raise ValueError(f"values must be [judges >= 2, seeds, pairs >= 2], got shape {list(values.shape)}")
    summary = _summarise(values, images, level, resamples, seed)
    per_judge = values.mean((1, 2))
    return JudgedSummary(summary.per_seed, tuple(per_judge.tolist()), summary.estimate, summary.low, summary.high,
                         summary.images, summary.pairs)


def over_images(
    values: torch.Tensor, images: torch.Tensor, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> SeedSummary:
    """`over_seeds` for a method without seeds (e.g. the per-pair optimiser, deterministic):
    `values` [P], one per pair; the interval resamples the distinct moving images only."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 1 or values.shape[0] < 2:
        raise ValueError(f"values must be [pairs >= 2], got shape {list(values.shape)}")
    return _summarise(values.unsqueeze(0), images, level, resamples, seed)


def over_runs(values: torch.Tensor, images: torch.Tensor, **options) -> SeedSummary:
    """`over_seeds` for [runs >= 2, pairs], `over_images` for one run ([1, pairs]): one call for
    a table that mixes trained networks (several seeds) with a deterministic method (one run)."""
    values = torch.as_tensor(values)
    if values.dim() != 2 or values.shape[0] < 1:
        raise ValueError(f"values must be [runs, pairs], got shape {list(values.shape)}")
    return over_images(values[0], images, **options) if values.shape[0] == 1 else over_seeds(values, images, **options)


def _summarise(values, images, level, resamples, seed) -> SeedSummary:
    """values [S, P] or [J, S, P] (judges); per_seed averages over the judges."""
    if values.dim() == 2:
        values = values.unsqueeze(0)
    images = torch.as_tensor(images)
    if images.shape != values.shape[2:] or images.dtype.is_floating_point:
        raise ValueError(f"images must be integer ids [pairs] = [{values.shape[2]}], got {images.dtype} {list(images.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("values contain NaN or inf; drop or fill them before summarising")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100, got {resamples!r}")
    _, cluster = torch.unique(images, return_inverse=True)
    clusters = int(cluster.max()) + 1
    if clusters < 2:
        raise ValueError("every pair has the same moving image: an interval over images needs at least 2 distinct ones")
    judges, seeds = values.shape[:2]
    sums = torch.zeros(judges, seeds, clusters, dtype=torch.float64).index_add_(2, cluster, values)  # [J, S, C]
    counts = torch.zeros(clusters, dtype=torch.float64).index_add_(0, cluster, torch.ones(len(cluster), dtype=torch.float64))

    generator = torch.Generator().manual_seed(seed)

    def weights(count: int) -> torch.Tensor:
        """[R, count]: how often each of `count` units is drawn in each resample (all 1 for a single unit)."""
        draws = torch.randint(count, (resamples, count), generator=generator)
        return torch.zeros(resamples, count, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))

    seed_weight = weights(seeds)
    image_weight = weights(clusters)
    judge_weight = weights(judges) if judges > 1 else torch.ones(resamples, 1, dtype=torch.float64)
    # resample r: mean over its judges and seeds of (sum over its images' pairs / number of those pairs)
    per_unit_sums = torch.einsum("rc,jsc->rjs", image_weight, sums)              # [R, J, S]
    weighted = torch.einsum("rj,rs,rjs->r", judge_weight, seed_weight, per_unit_sums)
    statistics = weighted / (judges * seeds * (image_weight @ counts))
    low, high = torch.quantile(statistics, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    per_seed = values.mean((0, 2))
    return SeedSummary(tuple(per_seed.tolist()), float(per_seed.mean()), float(low), float(high), clusters, values.shape[2])
