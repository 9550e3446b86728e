"""How far apart are two trainings of one seed on different floating-point paths?

`scripts/train_checkpoints.py --check` retrains a shipped network and compares what it does
(CHECK_TOLERANCE), not its weights: PyTorch promises no bitwise equality across processors or
thread counts, and over 800 Adam steps rounding differences grow until two runs of one seed have
weights as different as two seeds'. This script measures the spread those tolerances must
cover: it retrains each named checkpoint on several floating-point paths of this machine, each
in its own process, and writes the check's numbers for each to RETRAINING.md. For scale it also
gives the range of the same numbers over the recipe's shipped seeds: a tolerance near that range
catches broken training, not a different seed.

    python benchmarks/retraining.py                          # fives_single_step and fives
    python benchmarks/retraining.py fives_single_step --out /tmp/r.md
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from helpers.train import ENSEMBLE_SEEDS, checkpoint_path, load_checkpoint, member_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# name: (threads, extra environment)
PATHS = {
    "2 threads": (2, {}),
    "1 thread": (1, {}),
    "ATEN_CPU_CAPABILITY=default": (2, {"ATEN_CPU_CAPABILITY": "default"}),
    "HELPERS_SAMPLER=reference (modules, grid_sample)": (2, {"HELPERS_SAMPLER": "reference"}),
}
CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {scripts!r})
import train_checkpoints as script
from helpers.train import checkpoint_path, load_checkpoint, train
result = train(script.CHECKPOINTS[{name!r}], progress=False)
new, shipped = script.quality(result), script.quality(load_checkpoint(checkpoint_path({name!r})))
print(json.dumps({{"new": {{k: v.tolist() for k, v in new.items()}}, "shipped": {{k: v.tolist() for k, v in shipped.items()}}}}))
"""


def measure(name: str, threads: int, environment: dict) -> dict:
    code = CHILD.format(threads=threads, scripts=str(ROOT / "scripts"), name=name)
    output = subprocess.run([sys.executable, "-c", code], env={**os.environ, **environment}, cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def processor() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def seed_range(script, name: str) -> tuple[dict, int]:
    """The largest range, over the shipped seeds of `name`'s recipe, of each checked number, and
    how many seeds that is."""
    values = [script.quality(load_checkpoint(checkpoint_path(member_name(name, seed)))) for seed in ENSEMBLE_SEEDS]
    ranges = {}
    for measure in script.CHECK_TOLERANCE:
        stacked = torch.stack([value[measure].reshape(-1) for value in values])  # [seeds, entries]
        ranges[measure] = (stacked.max(0).values - stacked.min(0).values).max().item()
    return ranges, len(values)


def largest(a, b) -> float:
    a, b = (value if isinstance(value, list) else [value] for value in (a, b))
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["fives_single_step", "fives"])
    parser.add_argument("--out", type=Path, default=HERE / "RETRAINING.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_checkpoints as script

    lines = [
        "# Retraining one seed on other floating-point paths",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()} ({processor()}), "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; written by `python benchmarks/retraining.py`.",
        "Each row retrains the shipped checkpoint's config in a fresh process on one floating-point path and "
        "reports the largest difference from the shipped network in each number `--check` compares. "
        "Where a tolerance is below the range over seeds, the check tells a faithful retraining from "
        "another seed's network; where it is above, only from broken training.",
        "",
        "| checkpoint | path | " + " | ".join(script.CHECK_TOLERANCE) + " |",
        "| --- | --- | " + " | ".join("---" for _ in script.CHECK_TOLERANCE) + " |",
    ]
    worst = {measure: 0.0 for measure in script.CHECK_TOLERANCE}
    for name in args.names:
        for path, (threads, environment) in PATHS.items():
            result = measure(name, threads, environment)
            differences = {m: largest(result["new"][m], result["shipped"][m]) for m in script.CHECK_TOLERANCE}
            worst = {m: max(worst[m], differences[m]) for m in worst}
            lines.append(f"| {name} | {path} | " + " | ".join(f"{differences[m]:.4f}" for m in script.CHECK_TOLERANCE) + " |")
            print(lines[-1], flush=True)
        if name in script.RECIPES:
            spread, seeds = seed_range(script, name)
            lines.append(f"| {name} | range over its {seeds} shipped seeds (for scale) | "
                         + " | ".join(f"{spread[m]:.4f}" for m in script.CHECK_TOLERANCE) + " |")
            print(lines[-1], flush=True)
    lines += ["", "| | largest over the floating-point paths | " + " | ".join(f"{worst[m]:.4f}" for m in worst) + " |",
              "| | tolerance of `--check` | " + " | ".join(f"{script.CHECK_TOLERANCE[m]}" for m in worst) + " |", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
