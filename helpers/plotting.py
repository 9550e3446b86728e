"""Plotting: images, deformation grids, per-step small multiples, loss curves, saved figures.

Images are shown in pixel coordinates with row 0 at the top, like `imshow`. A transform
φ on the grid ([2, H, W], coordinates in [0, 1]) is drawn as the image of the regular
pixel grid under φ: line i joins φ(i, 0), φ(i, 1), ...; a regular lattice means identity.
Since the moving image is *sampled* at φ(x), the lattice shows where each fixed-image
pixel fetches its value from in the moving image.
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .losses import BendingLoss

CMAP = "gray"
DIFF_CMAP = "RdBu_r"


def figures_dir() -> Path:
    """Where figures go: $HELPERS_FIGURES, else the nearest `figures/` folder at or above
    the working directory (the repository's, when run from notebooks/), else ./figures."""
    if "HELPERS_FIGURES" in os.environ:
        return Path(os.environ["HELPERS_FIGURES"])
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "figures").is_dir():
            return folder / "figures"
    return Path.cwd() / "figures"


def save_figure(fig, name: str) -> Path:
    """Save `fig` as figures/NAME.png (NAME: notebook number and content, e.g. '03_loss_curves')."""
    path = figures_dir() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def to_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)


def show_image(ax, image, title: str = "", vmin=0.0, vmax=1.0, cmap=CMAP):
    """Draw an image [1, H, W] or [H, W] with pixel axes; returns the AxesImage."""
    image = to_numpy(image).reshape(to_numpy(image).shape[-2:])
    artist = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def show_difference(ax, warped, fixed, title: str = "warped − fixed"):
    """Signed difference, red where the warped image is brighter, blue where the fixed one is."""
    return show_image(ax, to_numpy(warped) - to_numpy(fixed), title, vmin=-1, vmax=1, cmap=DIFF_CMAP)


def grid_lines(phi, every: int = 2):
    """Polylines (in pixel units: x = column, y = row) of the lattice deformed by φ [2, H, W]."""
    phi = to_numpy(phi)
    height, width = phi.shape[1:]
    rows, cols = phi[0] * (height - 1), phi[1] * (width - 1)
    horizontal = [(cols[i], rows[i]) for i in range(0, height, every)]
    vertical = [(cols[:, j], rows[:, j]) for j in range(0, width, every)]
    return horizontal + vertical


def pixel_frame(ax, height: int, width: int, title: str) -> None:
    """Pixel axes like imshow's (row 0 at the top), equal aspect, no ticks."""
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def show_grid(ax, phi, title: str = "deformation grid", every: int = 2, background=None):
    """Draw φ [2, H, W] as a deformed lattice, optionally over an image; returns the lines."""
    height, width = to_numpy(phi).shape[1:]
    if background is not None:
        show_image(ax, background)
    lines = [ax.plot(x, y, color="tab:orange", lw=0.7)[0] for x, y in grid_lines(phi, every)]
    pixel_frame(ax, height, width, title)
    return lines


def show_displacement(ax, displacement, title: str = "displacement", every: int = 2):
    """Arrows of a displacement field [2, H, W] (coordinate units), drawn in pixels."""
    displacement = to_numpy(displacement)
    height, width = displacement.shape[1:]
    rows, cols = np.mgrid[0:height:every, 0:width:every]
    d_row = displacement[0, ::every, ::every] * (height - 1)
    d_col = displacement[1, ::every, ::every] * (width - 1)
    arrows = ax.quiver(cols, rows, d_col, d_row, angles="xy", scale_units="xy", scale=1, color="tab:blue", width=0.006)
    pixel_frame(ax, height, width, title)
    return arrows


def plot_registrations(moving, fixed, warped, phi, title: str = ""):
    """One row per pair ([n, 1, H, W] images, [n, 2, H, W] grids): moving, fixed, warped,
    difference, and the deformation grid over the moving image."""
    rows = len(moving)
    fig, axes = plt.subplots(rows, 5, figsize=(10, 2.2 * rows + 0.4), squeeze=False)
    for row in range(rows):
        titles = ["moving", "fixed", "warped moving", "warped − fixed", "deformation grid"] if row == 0 else [""] * 5
        show_image(axes[row, 0], moving[row], titles[0])
        show_image(axes[row, 1], fixed[row], titles[1])
        show_image(axes[row, 2], warped[row], titles[2])
        show_difference(axes[row, 3], warped[row], fixed[row], titles[3])
        show_grid(axes[row, 4], phi[row], titles[4], background=moving[row])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_registration(moving, fixed, warped, phi, title: str = ""):
    """One pair ([1, H, W] images, [2, H, W] grid): moving, fixed, warped, difference, grid."""
    return plot_registrations(moving[None], fixed[None], warped[None], phi[None], title)


def plot_steps(trace, fixed, pair: int = 0, title: str = ""):
    """Small multiples of one pair through every step: warped image, difference, grid."""
    steps = trace.warped.shape[0]
    fig, axes = plt.subplots(3, steps, figsize=(1.25 * steps, 4.2))
    similarity, flips = to_numpy(trace.similarity[:, pair]), to_numpy(trace.flips[:, pair])
    for k in range(steps):
        show_image(axes[0, k], trace.warped[k, pair], f"step {k}\nsim {similarity[k]:.3f}")
        show_difference(axes[1, k], trace.warped[k, pair], fixed[pair], "")
        show_grid(axes[2, k], trace.phi[k, pair], f"folds {flips[k]:.0f}", every=3)
    axes[0, 0].set_ylabel("warped", fontsize=9)
    axes[1, 0].set_ylabel("− fixed", fontsize=9)
    axes[2, 0].set_ylabel("grid", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_history(history: dict, title: str = "training", smooth: int = 25, xlabel: str = "training step"):
    """Every loss field against the training step, raw (faint) and as a running mean."""
    fields = list(BendingLoss._fields)
    fig, axes = plt.subplots(1, len(fields), figsize=(3.0 * len(fields), 2.6))
    for ax, name in zip(axes, fields):
        values = to_numpy(history[name])
        ax.plot(values, color="tab:blue", alpha=0.25, lw=0.6)
        if len(values) >= smooth:
            running = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth - 1, len(values)), running, color="tab:blue", lw=1.4)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("batch mean")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_calls(trace, fixed, pair: int = 0, title: str = ""):
    """What each call of the inner network sees: call k gets A ∘ Φ_{k−1} and B.

    Φ_{k−1} is the composition of the first k−1 steps (Φ_0 = identity)."""
    calls = trace.warped.shape[0] - 1
    fig, axes = plt.subplots(1, calls + 1, figsize=(1.3 * (calls + 1), 2.3))
    for k in range(calls):
        show_image(axes[k], trace.warped[k, pair], f"call {k + 1} sees\nA ∘ Φ{k}")
        if k:
            axes[k].annotate("", xy=(-0.02, 0.5), xytext=(-0.28, 0.5), xycoords="axes fraction",
                             arrowprops={"arrowstyle": "->", "color": "tab:orange"})
    show_image(axes[-1], fixed[pair], "and every call\nsees B")
    fig.subplots_adjust(bottom=0.2, top=0.72)
    fig.text(0.5, 0.06, "Φk = Φk−1 ∘ ψk, so after nine calls Φ9 = ψ1 ∘ ψ2 ∘ … ∘ ψ9 "
             "(each ψk = id + Dk acts on the coordinates first)", ha="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_step_curves(traces: dict, title: str = ""):
    """Per-step registration quality for several groups of pairs (label -> StepTrace):
    the similarity loss relative to step 0 (median and interquartile band over pairs),
    and the mean number of folded cells."""
    fig, (ax_similarity, ax_folds) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, trace in traces.items():
        ratio = to_numpy(trace.similarity / trace.similarity[:1])
        steps = np.arange(ratio.shape[0])
        low, median, high = np.percentile(ratio, [25, 50, 75], axis=1)
        (line,) = ax_similarity.plot(steps, median, marker="o", ms=3, label=label)
        ax_similarity.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        ax_folds.plot(steps, to_numpy(trace.flips).mean(1), marker="o", ms=3, label=label, color=line.get_color())
    ax_similarity.set_xlabel("registration step k")
    ax_similarity.set_ylabel("similarity loss / its value at step 0")
    ax_similarity.set_title("alignment (median, 25–75% band)", fontsize=9)
    ax_folds.set_xlabel("registration step k")
    ax_folds.set_ylabel("folded cells per pair (mean)")
    ax_folds.set_title("folds", fontsize=9)
    ax_similarity.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_matrix(ax, values, row_labels, col_labels, title: str = "", fmt: str = "{:.2f}",
                cmap: str = "viridis", vmin=None, vmax=None, xlabel: str = "", ylabel: str = ""):
    """An annotated heatmap of `values` [R, C] (one number per cell, printed in it)."""
    values = to_numpy(values)
    artist = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    low, high = artist.get_clim()
    for (row, col), value in np.ndenumerate(values):
        shade = (value - low) / (high - low) if high > low else 0.5
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=8,
                color="black" if 0.25 < shade < 0.75 or (cmap == "viridis" and shade >= 0.75) else "white")
    ax.set_xticks(range(len(col_labels)), [str(label) for label in col_labels])
    ax.set_yticks(range(len(row_labels)), [str(label) for label in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return artist


def plot_long_run(traces: dict, trained_steps: int, title: str = ""):
    """Runs longer than training (label -> StepTrace): the outer loss relative to step 0
    (median, interquartile band), the size of each step's field in pixels (median root mean
    square), and the folds; a dashed line marks the number of steps the network was trained for."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for label, trace in traces.items():
        ratio = to_numpy(trace.losses.all_loss / trace.losses.all_loss[:1])
        steps = np.arange(ratio.shape[0])
        low, median, high = np.percentile(ratio, [25, 50, 75], axis=1)
        (line,) = axes[0].plot(steps, median, label=label)
        axes[0].fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        height = trace.displacement.shape[-2]
        size = to_numpy(trace.displacement[1:].pow(2).flatten(2).mean(2).sqrt() * (height - 1))
        axes[1].plot(steps[1:], np.median(size, axis=1), color=line.get_color(), label=label)
        axes[2].plot(steps, to_numpy(trace.flips).mean(1), color=line.get_color(), label=label)
    labels = ("outer loss / its value at step 0", "step size: rms of D_k (pixels)", "folded cells per pair (mean)")
    for ax, ylabel in zip(axes, labels):
        ax.axvline(trained_steps, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("registration step k")
        ax.set_ylabel(ylabel)
    axes[0].set_title(f"loss (median, 25–75%); trained for {trained_steps} steps", fontsize=9)
    axes[1].set_title("how far each step moves (median)", fontsize=9)
    axes[2].set_title("folds", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_tradeoff(families: dict, title: str = ""):
    """Similarity against folds for families of networks trained with several λ:
    label -> (λ values, similarity [n], folds [n]), one point per network, labelled with its λ."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for label, (lambdas, similarity, folds) in families.items():
        similarity, folds = to_numpy(similarity), to_numpy(folds)
        order = np.argsort(lambdas)
        ax.plot(folds[order], similarity[order], marker="o", label=label)
        for lmbda, x, y in zip(lambdas, folds, similarity):
            ax.annotate(f"λ={lmbda:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("folded cells per pair after registration (mean)")
    ax.set_ylabel("held-out similarity loss (mean)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_summaries(ax, summaries: dict, title: str = "", xlabel: str = "", color: str = "C0", offset: float = 0.0,
                   label: str | None = None, log: bool = False):
    """Horizontal interval plot of `summaries` (row label -> helpers.ensembles.SeedSummary): for
    each row its estimate (a diamond), its 95% interval (a bar) and every seed's value (dots),
    drawn at height row + `offset` (so that two series, e.g. two judges, can share the rows)."""
    labels = list(summaries)
    for row, name in enumerate(labels):
        summary, y = summaries[name], row + offset
        ax.plot([summary.low, summary.high], [y, y], color=color, lw=2, alpha=0.6)
        ax.plot(summary.per_seed, [y] * summary.seeds, "o", color=color, ms=3, alpha=0.7)
        ax.plot([summary.estimate], [y], "D", color=color, ms=5, label=label if row == 0 else None)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", lw=0.3)


def plot_reliability(reliabilities: dict, title: str = ""):
    """Reliability diagrams side by side: for each judge ({name: helpers.classifier.Reliability}),
    the share correct against the mean confidence in each bin of confidence (dots sized by how
    many images fall in the bin), with the diagonal a calibrated judge would follow."""
    fig, axes = plt.subplots(1, len(reliabilities), figsize=(2.6 * len(reliabilities), 2.8), squeeze=False)
    for ax, (name, result) in zip(axes[0], reliabilities.items()):
        filled = result.count > 0
        sizes = 8 + 120 * (result.count[filled] / result.count.sum()).sqrt()
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        ax.scatter(to_numpy(result.confidence[filled]), to_numpy(result.accuracy[filled]), s=to_numpy(sizes), color="C0")
        ax.set_xlim(0, 1.02), ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top class)", fontsize=8)
        ax.set_title(f"{name}\nECE {result.expected_calibration_error:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("share correct", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
