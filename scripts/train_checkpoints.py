"""Train the networks that ship with the package, with one seeded command.

    python scripts/train_checkpoints.py fives sevens_seed_2   # write helpers/checkpoints/*.pt
    python scripts/train_checkpoints.py sevens --check        # retrain, compare with the shipped file
    python scripts/train_checkpoints.py --group chapter05     # every checkpoint chapters 05 and 06 load
    python scripts/train_checkpoints.py --group judges        # the three judges (helpers.classifier)
    python scripts/train_checkpoints.py --group all           # every shipped network and judge

Every recipe below ships for each seed in helpers.train.ENSEMBLE_SEEDS, on the training split of
one digit of the full MNIST (helpers.data), with helpers.train.TrainConfig's defaults (the post's
network, world and λ; our 800 Adam steps on batches of 128 pairs) except where its entry says
otherwise: seed 0 under the recipe's name (`fives`), the other seeds as `fives_seed_1`, ...
Only `fives` itself is stored in float32; every other network in float16, to keep the repository
small (loading gives the rounded network back in float32). Notebook 03 trains the seed-0
configuration itself and saves it under a name of its own (my_checkpoint_path), never here: this
script is the only writer of helpers/checkpoints/.

Chapters 03 and 04 measure the training-set size and augmentation: `fives_300` (the same recipe on
only the first 300 training 5s, the size the collection used before it shipped the full MNIST) and
`fives_augment` (every training image turned, scaled and shifted a little each time it is drawn).

The judges (helpers.classifier.JUDGES) are trained here too, on the classifier split, and ship as
helpers/checkpoints/judge_ARCHITECTURE.pt; `--check` retrains one and compares its accuracy on
MNIST's test set and its probabilities there with the shipped judge's.

Chapters 05 and 06 add: `twos` (a third training digit); `fives_single_step` (the same inner network
acting once instead of nine times, same optimiser steps and batch size); and a λ sweep of both
(`fives_lambda_*` and `fives_single_step_lambda_*`; λ = 0.05 is `fives` / `fives_single_step`).

Chapter 07 adds the supervised paradigm: `fives_supervised` and `fives_supervised_single_step`,
the same networks trained to imitate the per-pair optimiser's fields on training 5s
(helpers.supervised; the targets are computed once per run of this script, about a minute).
"""

import argparse
import dataclasses
import functools
import sys
import time

import torch

from helpers.analysis import trace_steps
from helpers.classifier import JUDGES, judge_path, labelled_split, load_judge, predict_proba, save_judge, train_classifier
from helpers.data import evaluation_pairs
from helpers.supervised import target_bank, train_supervised
from helpers.train import ENSEMBLE_SEEDS, TrainConfig, checkpoint_path, load_checkpoint, member_name, save_checkpoint, train

LAMBDA_SWEEP = (0.0125, 0.2, 0.8)  # besides the post's 0.05


def lambda_name(prefix: str, lmbda: float) -> str:
    """'fives_lambda_0_2' for (fives, 0.2): a checkpoint name (a plain identifier)."""
    return f"{prefix}_lambda_{str(lmbda).replace('.', '_')}"


# The recipes, by the name of their seed-0 checkpoint; each is shipped for every seed in
# ENSEMBLE_SEEDS (seed 0 as `fives`, seed 3 as `fives_seed_3`, ...).
RECIPES = {
    "fives": TrainConfig(digit=5),
    "fives_300": TrainConfig(digit=5, train_size=300),
    "fives_augment": TrainConfig(digit=5, augment=0.5),
    "sevens": TrainConfig(digit=7),
    "twos": TrainConfig(digit=2),
    "fives_single_step": TrainConfig(digit=5, registration_steps=1),
    "fives_supervised": TrainConfig(digit=5, paradigm="supervised"),
    "fives_supervised_single_step": TrainConfig(digit=5, registration_steps=1, paradigm="supervised"),
    **{lambda_name("fives", lmbda): TrainConfig(digit=5, lmbda=lmbda) for lmbda in LAMBDA_SWEEP},
    **{
        lambda_name("fives_single_step", lmbda): TrainConfig(digit=5, lmbda=lmbda, registration_steps=1)
        for lmbda in LAMBDA_SWEEP
    },
}
CHECKPOINTS = {
    member_name(base, seed): dataclasses.replace(config, seed=seed) for base, config in RECIPES.items() for seed in ENSEMBLE_SEEDS
}


def members(*bases: str) -> list[str]:
    return [member_name(base, seed) for base in bases for seed in ENSEMBLE_SEEDS]


# Each group names every checkpoint its chapter loads, the single-step (cheap) recipes first.
SINGLE_STEP = ["fives_single_step", *(lambda_name("fives_single_step", l) for l in LAMBDA_SWEEP)]
NINE_STEPS = ["fives", "sevens", "twos", *(lambda_name("fives", l) for l in LAMBDA_SWEEP)]
TRAINING_SET = ["fives_300", "fives_augment"]
SUPERVISED = ["fives_supervised_single_step", "fives_supervised"]
EVERY = members(*SINGLE_STEP, *NINE_STEPS, *TRAINING_SET, *SUPERVISED)
assert set(EVERY) == set(CHECKPOINTS)
JUDGE_NAMES = [f"judge_{recipe.architecture}" for recipe in JUDGES.values()]
JUDGE_RECIPES = dict(zip(JUDGE_NAMES, JUDGES.values()))
GROUPS = {
    "judges": JUDGE_NAMES,
    "chapter03": members("fives", *TRAINING_SET),
    "chapter04": members("fives", "sevens", *TRAINING_SET),
    "chapter05": members(*SINGLE_STEP, *NINE_STEPS),
    "chapter07": members("fives_single_step", "fives", *SUPERVISED),
    "all": [*JUDGE_NAMES, *EVERY],
}


def weights_format(name: str) -> str:
    """`fives` (the network chapter 03 retrains and compares with) ships in float32; every other
    network in float16, which halves the repository's growth."""
    return "float32" if name == "fives" else "float16"


# How far a retrained network may be from the shipped one. Floating-point sums differ between
# processors and thread counts, and over 800 Adam steps those differences grow until the weights
# of two runs of one seed differ as much as two seeds' do; what must agree is what the network
# does. Each tolerance is about three times the largest difference that benchmarks/retraining.py
# measured between floating-point paths (benchmarks/RETRAINING.md, which also gives the range over
# the shipped seeds for scale).
# A retrained judge sums in one thread (helpers.classifier.train_classifier), but convolutions
# still round differently between processors; what must agree is what it says.
JUDGE_TOLERANCE = {
    "test accuracy": 0.003,                 # share of MNIST's 10,000 test images
    "mean |difference| of P(true digit)": 0.01,
}
CHECK_TOLERANCE = {
    "final training loss": 0.002,        # mean of the last 100 steps' outer loss
    "held-out outer loss": 0.003,        # mean over 256 held-out pairs of the training digit
    "held-out similarity ratio": 0.045,  # per step: median over those pairs of after / before
}


@functools.lru_cache(maxsize=None)
def targets_for(config: TrainConfig):
    """The supervised targets of a recipe (independent of its seed and steps), made once per run."""
    started = time.perf_counter()
    bank = target_bank(dataclasses.replace(config, seed=0, registration_steps=1))
    print(f"made {len(bank.moving)} supervised targets with the per-pair optimiser in {time.perf_counter() - started:.0f} s", flush=True)
    return bank


def train_recipe(config: TrainConfig):
    if config.paradigm == "supervised":
        return train_supervised(config, targets_for(dataclasses.replace(config, seed=0, registration_steps=1)))
    return train(config)


def quality(result) -> dict:
    """What a retraining check compares: the numbers above, as float64 tensors."""
    moving, fixed = evaluation_pairs(result.config.digit, result.config.digit)
    with torch.no_grad():
        trace = trace_steps(result.net, moving, fixed)
    return {
        "final training loss": result.history["all_loss"][-100:].mean().double(),  # the outer loss, in both paradigms
        "held-out outer loss": trace.losses.all_loss[-1].mean().double(),
        "held-out similarity ratio": (trace.similarity[1:] / trace.similarity[:1]).median(1).values.double(),
    }


def format_values(values: torch.Tensor) -> str:
    return f"{values.item():.4f}" if values.dim() == 0 else "[" + ", ".join(f"{v:.3f}" for v in values.tolist()) + "]"


def judge_quality(model) -> dict:
    images, labels = labelled_split("heldout")
    probabilities = predict_proba(model, images)
    return {"accuracy": (probabilities.argmax(-1) == labels).double().mean(),
            "p_true": probabilities[torch.arange(len(labels)), labels].double()}


def train_judge(name: str, check: bool) -> bool:
    """Train one judge; write it, or (check) compare it with the shipped one. True if it passed."""
    recipe = JUDGE_RECIPES[name]
    started = time.perf_counter()
    result = train_classifier(epochs=recipe.epochs, seed=recipe.seed, architecture=recipe.architecture)
    seconds = time.perf_counter() - started
    if not check:
        save_judge(judge_path(recipe), result.model, recipe)
        print(f"wrote {judge_path(recipe)} (trained in {seconds:.0f} s; test accuracy {result.heldout_accuracy:.4f})", flush=True)
        return True
    shipped, shipped_recipe = load_judge(judge_path(recipe))
    new, old = judge_quality(result.model), judge_quality(shipped)
    differences = {"test accuracy": (new["accuracy"] - old["accuracy"]).abs().item(),
                   "mean |difference| of P(true digit)": (new["p_true"] - old["p_true"]).abs().mean().item()}
    passed = shipped_recipe == recipe
    for measure, tolerance in JUDGE_TOLERANCE.items():
        ok = differences[measure] <= tolerance
        passed &= ok
        print(f"{name}: {measure}: difference {differences[measure]:.4f} (tolerance {tolerance}) {'ok' if ok else 'FAILED'}", flush=True)
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"checkpoints to train, of: {', '.join(sorted([*JUDGE_RECIPES, *CHECKPOINTS]))}")
    parser.add_argument("--group", choices=sorted(GROUPS), action="append", default=[], help="add a group of checkpoints")
    parser.add_argument("--check", action="store_true", help="retrain and compare instead of writing")
    parser.add_argument("--missing", action="store_true", help="only train checkpoints that do not exist yet")
    args = parser.parse_args()
    names = list(dict.fromkeys([*args.names, *(name for group in args.group for name in GROUPS[group])]))
    if not names:
        parser.error("name at least one checkpoint or --group")
    unknown = [name for name in names if name not in CHECKPOINTS and name not in JUDGE_RECIPES]
    if unknown:
        parser.error(f"unknown checkpoint(s) {unknown}; expected names from {sorted([*JUDGE_RECIPES, *CHECKPOINTS])}")
    if args.missing and not args.check:
        names = [name for name in names if not (judge_path(JUDGE_RECIPES[name]) if name in JUDGE_RECIPES
                                                 else checkpoint_path(name)).exists()]
    failed = False
    for name in names:
        if name in JUDGE_RECIPES:
            failed |= not train_judge(name, args.check)
            continue
        started = time.perf_counter()
        result = train_recipe(CHECKPOINTS[name])
        seconds = time.perf_counter() - started
        path = checkpoint_path(name)
        if not args.check:
            save_checkpoint(path, result, weights=weights_format(name), shipped=True)
            print(f"wrote {path} (trained in {seconds:.0f} s)", flush=True)
            continue
        shipped = load_checkpoint(path)
        if shipped.config != result.config:
            print(f"{name}: shipped config {shipped.config} differs from {result.config}")
            failed = True
            continue
        new, old = quality(result), quality(shipped)
        for measure, tolerance in CHECK_TOLERANCE.items():
            difference = (new[measure] - old[measure]).abs().max().item()
            ok = difference <= tolerance
            failed |= not ok
            print(f"{name}: {measure} {format_values(new[measure])} vs shipped {format_values(old[measure])}: "
                  f"largest difference {difference:.4f} (tolerance {tolerance}) {'ok' if ok else 'FAILED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
