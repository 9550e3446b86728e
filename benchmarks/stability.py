"""Stability of long training runs, with and without the spike guard.

Trains the post's configuration (Adam, lr 1e-3, batch 128, training 5s, λ = 0.05) for
several seeds past step 2,600, with `spike_guard=None` and/or the default guard, each run in
its own single-threaded process, on one floating-point path per invocation, and keeps every
run's history in stability_runs/.

    python benchmarks/stability.py                                 # the default recipe, seeds 0-4 × 4000 steps
    python benchmarks/stability.py --decay-after none              # the post's constant learning rate throughout
    python benchmarks/stability.py --guards none 3 --seeds 0 1 2   # without and with the spike guard
    ATEN_CPU_CAPABILITY=default python benchmarks/stability.py ... # the same on PyTorch's portable kernels
    python benchmarks/stability.py --summarize DIR                 # only re-read histories in DIR

It writes the table of every stored run to STABILITY_RUNS.md and the curves to STABILITY_RUNS.png.
"""

import argparse
import datetime
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def fp_path() -> str:
    """The floating-point path this process's PyTorch takes: its kernels' CPU capability."""
    return os.environ.get("ATEN_CPU_CAPABILITY", "native")


def history_path(directory: Path, seed: int, guard: str, decay: str, steps: int) -> Path:
    suffix = "" if fp_path() == "native" else f"_p{fp_path()}"
    return directory / f"hist_s{seed}_g{guard}_d{decay}_n{steps}{suffix}.npz"


def run(directory: Path, seed: int, guard: str, decay: str, steps: int) -> Path:
    import torch

    torch.set_num_threads(1)
    from helpers.train import TrainConfig, TrainingDiverged, train

    decay_after = TrainConfig.decay_after if decay == "default" else None if decay == "none" else int(decay)
    config = TrainConfig(steps=steps, seed=seed, spike_guard=None if guard == "none" else float(guard), decay_after=decay_after)
    try:
        history = train(config, progress=False).history
    except TrainingDiverged as diverged:  # keep the history up to the failure
        history = diverged.history
    path = history_path(directory, seed, guard, str(decay_after).lower(), steps)
    np.savez_compressed(path, **{name: values.numpy() for name, values in history.items()})
    return path


DIVERGED_JUMP = 3.0  # a 100-step mean this many times the best earlier one: the run blew up


def summarize_run(history, steps: int) -> dict:
    """Numbers that tell a stable run from an unstable one."""
    loss = history["all_loss"]
    completed = len(loss)
    windows = np.array([loss[start : start + 100].mean() for start in range(0, len(loss), 100)])  # 100-step means
    best_so_far = np.minimum.accumulate(windows)
    worst_jump = float((windows[1:] / best_so_far[:-1]).max())
    return {
        "final": float(loss[-200:].mean()),
        "late_rise": float(loss[-200:].mean() / windows[:-2].min()),  # the last 200 steps over the best earlier 100
        "max_after_1000": float(loss[1000:].max()) if len(loss) > 1000 else float("nan"),
        "worst_jump": worst_jump,  # a 100-step mean over the best earlier one: > 1 means the loss went back up
        "completed": completed,
        "diverged": completed < steps or worst_jump > DIVERGED_JUMP,
        "skipped": int(history["skipped"].sum()) if "skipped" in history else 0,
        "spikes": int((history["grad_norm"][20:] > 3 * np.median(history["grad_norm"])).sum()),
    }


def write_report(directory: Path, out: Path) -> str:
    rows = []
    for path in sorted(directory.glob("hist_s*_g*_d*_n*.npz")):
        seed, guard, decay, steps, *fp = path.stem[len("hist_") :].split("_")
        with np.load(path) as data:
            summary = summarize_run({key: data[key] for key in data.files}, int(steps[1:]))
        rows.append((decay[1:], guard[1:], fp[0][1:] if fp else "native", int(seed[1:]), int(steps[1:]), summary))
    lines = [
        "# Stability of long training runs",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; written by `python benchmarks/stability.py`.",
        "Floating-point path: `native` is PyTorch's best kernels for the processor, `default` its portable ones "
        "(`ATEN_CPU_CAPABILITY=default`). *Late rise*: the mean loss of the last 200 steps over the best earlier "
        f"100-step mean. *Diverged*: the run stopped on a non-finite loss, or a 100-step mean rose above "
        f"{DIVERGED_JUMP:g}× the best before it. *lr decay after*: `TrainConfig.decay_after` (none: the post's "
        "constant learning rate throughout).",
        "",
        "| lr decay after | spike guard | floating-point path | seed | steps completed | final loss (last 200) | late rise | max loss after step 1000 | worst 100-step jump | diverged | skipped updates | steps with grad norm > 3× median |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for decay, guard, fp, seed, steps, s in sorted(rows, key=lambda row: (row[0] == "none", *row[1:5])):
        lines.append(
            f"| {decay} | {guard} | {fp} | {seed} | {s['completed']} of {steps} | {s['final']:.4f} | {s['late_rise']:.3f} | "
            f"{s['max_after_1000']:.4f} | {s['worst_jump']:.3f} | {'yes' if s['diverged'] else 'no'} | "
            f"{s['skipped']} ({s['skipped'] / s['completed']:.1%}) | {s['spikes']} |"
        )
    table = "\n".join(lines) + "\n"
    out.write_text(table)
    return table


def plot_runs(directory: Path, out: Path) -> None:
    """Training loss and gradient norm of every run, on log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_grad) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for path in sorted(directory.glob("hist_s*_g*_d*_n*.npz")):
        with np.load(path) as data:
            loss, grad = data["all_loss"], data["grad_norm"]
        seed, guard, decay, _, *fp = path.stem[len("hist_") :].split("_")
        label = f"{seed}, guard {guard[1:]}, decay {decay[1:]}" + (f", {fp[0][1:]}" if fp else "")
        (line,) = ax_loss.semilogy(loss, lw=0.6, label=label)
        ax_grad.semilogy(grad, lw=0.6, color=line.get_color())
    ax_loss.set_ylabel("training loss (all_loss)")
    ax_grad.set_ylabel("gradient norm")
    ax_grad.set_xlabel("training step")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("Long runs of the post's configuration, with and without the spike guard", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--guards", nargs="+", default=["3"])
    parser.add_argument("--decay-after", default="default", help="TrainConfig.decay_after: a number of steps, none, or default")
    parser.add_argument("--dir", type=Path, default=HERE / "stability_runs")
    parser.add_argument("--summarize", type=Path, help="only summarise the histories in this folder")
    parser.add_argument("--out", type=Path, default=HERE / "STABILITY_RUNS.md")
    args = parser.parse_args()

    if args.summarize is None:
        args.dir.mkdir(parents=True, exist_ok=True)
        jobs = [(args.dir, seed, guard, args.decay_after, args.steps) for seed in args.seeds for guard in args.guards]
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            for path in pool.map(run, *zip(*jobs)):
                print("wrote", path, flush=True)
    print(write_report(args.summarize or args.dir, args.out))
    plot_runs(args.summarize or args.dir, args.out.with_suffix(".png"))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
