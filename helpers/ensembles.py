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
    images = torch.as_tensor(images)
    if images.shape != values.shape[1:] or images.dtype.is_floating_point:
        raise ValueError(f"images must be integer ids [pairs] = [{values.shape[1]}], got {images.dtype} {list(images.shape)}")
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
    sums = torch.zeros(values.shape[0], clusters, dtype=torch.float64).index_add_(1, cluster, values)  # [S, C]
    counts = torch.zeros(clusters, dtype=torch.float64).index_add_(0, cluster, torch.ones(len(cluster), dtype=torch.float64))

    generator = torch.Generator().manual_seed(seed)
    seeds = values.shape[0]
    seed_weight = torch.zeros(resamples, seeds, dtype=torch.float64).scatter_add_(
        1, torch.randint(seeds, (resamples, seeds), generator=generator), torch.ones(resamples, seeds, dtype=torch.float64))
    image_weight = torch.zeros(resamples, clusters, dtype=torch.float64).scatter_add_(
        1, torch.randint(clusters, (resamples, clusters), generator=generator), torch.ones(resamples, clusters, dtype=torch.float64))
    # resample r: mean over its seeds of (sum over its images' pairs / number of those pairs)
    per_seed_sums = image_weight @ sums.T                                   # [R, S]
    statistics = (seed_weight * per_seed_sums).sum(1) / (seeds * (image_weight @ counts))
    low, high = torch.quantile(statistics, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    per_seed = values.mean(1)
    return SeedSummary(tuple(per_seed.tolist()), float(per_seed.mean()), float(low), float(high), clusters, values.shape[1])
