"""A short training run on MNIST 5s that prints what it measured.

Trains the post's network (9 steps of one shared FCNet, λ = 0.05) for a few hundred
Adam steps, then registers held-out 5→5 pairs and prints the similarity loss after
each registration step, using the same per-step view the notebooks use.
"""

import argparse

import torch

from helpers.analysis import trace_steps
from helpers.data import load_digits, random_pairs
from helpers.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = TrainConfig(digit=5, steps=args.steps, seed=args.seed)
    result = train(config)
    history = result.history["all_loss"]
    print(f"trained {config.steps} steps, batch {config.batch_size}, lr {config.lr}")
    print(f"training loss: first 20 steps {history[:20].mean():.4f}, last 20 steps {history[-20:].mean():.4f}")

    moving, fixed = random_pairs(load_digits(5, "heldout"), 256, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        trace = trace_steps(result.net, moving, fixed)
    similarity = trace.similarity.mean(1)
    print("held-out 5→5 pairs (256): similarity loss after each registration step")
    for step, value in enumerate(similarity.tolist()):
        print(f"  step {step}: {value:.4f}   ({value / similarity[0]:.2f} of unregistered)")
    print(f"folded cells per pair after step 9: {trace.flips[-1].mean():.2f}")


if __name__ == "__main__":
    main()
