"""Train the networks that ship with the package, with one seeded command.

    python scripts/train_checkpoints.py fives sevens          # write helpers/checkpoints/*.pt
    python scripts/train_checkpoints.py sevens --check        # retrain, compare with the shipped file
    python scripts/train_checkpoints.py --group chapter05     # every checkpoint chapter 05 loads

Every checkpoint is seed 0 on the training split of one digit, with the post's configuration
(helpers.train.TrainConfig's defaults: 800 Adam steps on batches of 128 pairs) except where
its entry below says otherwise. Notebook 03 trains and saves `fives` itself, with the same
configuration, so running it regenerates the same file.

Chapter 05 adds: `twos` (a third training digit); `fives_single_step` (the same inner network
acting once instead of nine times, same optimiser steps and batch size); and a λ sweep of both
(`fives_lambda_*` and `fives_single_step_lambda_*`; λ = 0.05 is `fives` / `fives_single_step`).
"""

import argparse
import sys
import time

from helpers.models import inner_fcnet
from helpers.train import TrainConfig, checkpoint_path, load_checkpoint, save_checkpoint, train

LAMBDA_SWEEP = (0.0125, 0.2, 0.8)  # besides the post's 0.05


def lambda_name(prefix: str, lmbda: float) -> str:
    """'fives_lambda_0_2' for (fives, 0.2): a checkpoint name (a plain identifier)."""
    return f"{prefix}_lambda_{str(lmbda).replace('.', '_')}"


CHECKPOINTS = {
    "fives": TrainConfig(digit=5, seed=0),
    "sevens": TrainConfig(digit=7, seed=0),
    "twos": TrainConfig(digit=2, seed=0),
    "fives_single_step": TrainConfig(digit=5, seed=0, registration_steps=1),
    **{lambda_name("fives", lmbda): TrainConfig(digit=5, seed=0, lmbda=lmbda) for lmbda in LAMBDA_SWEEP},
    **{
        lambda_name("fives_single_step", lmbda): TrainConfig(digit=5, seed=0, lmbda=lmbda, registration_steps=1)
        for lmbda in LAMBDA_SWEEP
    },
}
GROUPS = {
    "chapter04": ["fives", "sevens"],
    # cheapest first
    "chapter05": [
        "fives_single_step",
        *(lambda_name("fives_single_step", lmbda) for lmbda in LAMBDA_SWEEP),
        "twos",
        *(lambda_name("fives", lmbda) for lmbda in LAMBDA_SWEEP),
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"checkpoints to train, of: {', '.join(sorted(CHECKPOINTS))}")
    parser.add_argument("--group", choices=sorted(GROUPS), action="append", default=[], help="add a group of checkpoints")
    parser.add_argument("--check", action="store_true", help="retrain and compare instead of writing")
    args = parser.parse_args()
    names = list(dict.fromkeys([*args.names, *(name for group in args.group for name in GROUPS[group])]))
    if not names:
        parser.error("name at least one checkpoint or --group")
    unknown = [name for name in names if name not in CHECKPOINTS]
    if unknown:
        parser.error(f"unknown checkpoint(s) {unknown}; expected names from {sorted(CHECKPOINTS)}")
    failed = False
    for name in names:
        started = time.perf_counter()
        result = train(CHECKPOINTS[name])
        seconds = time.perf_counter() - started
        path = checkpoint_path(name)
        if not args.check:
            save_checkpoint(path, result)
            print(f"wrote {path} (trained in {seconds:.0f} s)", flush=True)
            continue
        shipped = load_checkpoint(path)
        if shipped.config != result.config:
            print(f"{name}: shipped config {shipped.config} differs from {result.config}")
            failed = True
            continue
        new, old = inner_fcnet(result.net).state_dict(), inner_fcnet(shipped.net).state_dict()
        largest = max((new[key] - old[key]).abs().max().item() for key in new)
        final_new = result.history["all_loss"][-100:].mean().item()
        final_old = shipped.history["all_loss"][-100:].mean().item()
        print(f"{name}: largest weight difference {largest:.2e}; final loss {final_new:.5f} vs shipped {final_old:.5f}")
        failed |= not abs(final_new - final_old) <= 1e-3 * abs(final_old)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
