"""Train the networks that ship with the package, with one seeded command.

    python scripts/train_checkpoints.py fives sevens          # write helpers/checkpoints/*.pt
    python scripts/train_checkpoints.py sevens --check        # retrain, compare with the shipped file

Every checkpoint is the post's configuration (helpers.train.TrainConfig's defaults) on the
training split of one digit, seed 0. Notebook 03 trains and saves `fives` itself, with the same
configuration, so running it regenerates the same file.
"""

import argparse
import sys

from helpers.models import inner_fcnet
from helpers.train import TrainConfig, checkpoint_path, load_checkpoint, save_checkpoint, train

CHECKPOINTS = {"fives": TrainConfig(digit=5, seed=0), "sevens": TrainConfig(digit=7, seed=0)}

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(CHECKPOINTS))
    parser.add_argument("--check", action="store_true", help="retrain and compare instead of writing")
    args = parser.parse_args()
    failed = False
    for name in args.names:
        result = train(CHECKPOINTS[name])
        path = checkpoint_path(name)
        if not args.check:
            save_checkpoint(path, result)
            print(f"wrote {path}")
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
