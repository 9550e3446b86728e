"""Sliders that redraw a registration: through the steps of a multi-step one (`StepScrubber`),
or through the values of λ for the per-pair optimiser (`LambdaScrubber`, chapter 01).

Core ipywidgets only (IntSlider, SelectionSlider, Output), so they work in JupyterLab, Notebook
and Colab without a custom widget manager. The drawing is plain matplotlib on one Figure whose
artists are updated in place; `tests/` drive it by setting slider values.
"""

import io

import ipywidgets as widgets
import numpy as np
from IPython.display import Image, display
from matplotlib.figure import Figure

from .plotting import grid_lines, show_difference, show_displacement, show_grid, show_image, to_numpy


class StepScrubber:
    """For step k of pair p, shows the warped moving image, the fixed image, their
    difference, the composed deformation grid, the displacement step k added, and that
    step's similarity loss and folds.

    trace: a `helpers.analysis.StepTrace` of B pairs; fixed: the fixed images [B, 1, H, W].
    """

    def __init__(self, trace, fixed, description: str = ""):
        self.trace, self.fixed = trace, fixed
        steps, pairs = trace.warped.shape[:2]
        self.step = widgets.IntSlider(value=0, min=0, max=steps - 1, description="step", continuous_update=True)
        self.pair = widgets.IntSlider(value=0, min=0, max=pairs - 1, description="pair", continuous_update=False)
        self.output = widgets.Output()
        self.figure = Figure(figsize=(12, 2.8))
        axes = self.figure.subplots(1, 5)
        pair, k = 0, 0
        self.artists = {
            "warped": show_image(axes[0], trace.warped[k, pair], "warped moving"),
            "fixed": show_image(axes[1], fixed[pair], "fixed"),
            "difference": show_difference(axes[2], trace.warped[k, pair], fixed[pair]),
            "grid": show_grid(axes[3], trace.phi[k, pair], "composed grid"),
            "displacement": show_displacement(axes[4], trace.displacement[k, pair], "added by this step"),
        }
        self.title = self.figure.suptitle("", fontsize=10)
        self.description = description
        self.step.observe(self._changed, names="value")
        self.pair.observe(self._changed, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.step, self.pair]), self.output])
        self.render()

    def _changed(self, change) -> None:
        self.render()

    def render(self) -> None:
        """Redraw for the sliders' current values, then show the figure in the Output."""
        k, pair = self.step.value, self.pair.value
        warped, fixed = to_numpy(self.trace.warped[k, pair, 0]), to_numpy(self.fixed[pair, 0])
        self.artists["warped"].set_data(warped)
        self.artists["fixed"].set_data(fixed)
        self.artists["difference"].set_data(warped - fixed)
        for line, (x, y) in zip(self.artists["grid"], grid_lines(self.trace.phi[k, pair])):
            line.set_data(x, y)
        displacement = to_numpy(self.trace.displacement[k, pair])
        height, width = displacement.shape[1:]
        arrows = self.artists["displacement"]
        arrows.set_UVC(
            displacement[1, ::2, ::2].ravel() * (width - 1), displacement[0, ::2, ::2].ravel() * (height - 1)
        )
        similarity = float(self.trace.similarity[k, pair])
        folds = float(self.trace.flips[k, pair])
        self.title.set_text(
            f"{self.description}pair {pair}, step {k}: similarity loss {similarity:.4f}, folded cells {folds:.0f}"
        )
        # As a PNG, so that it shows even where no matplotlib display hook is set up yet.
        png = io.BytesIO()
        self.figure.savefig(png, format="png")
        self.output.clear_output(wait=True)
        with self.output:
            display(Image(data=png.getvalue(), format="png"))

    def shown_arrays(self) -> dict:
        """What is drawn now, as arrays (for tests and for readers who want the numbers)."""
        return {
            "warped": np.asarray(self.artists["warped"].get_array()),
            "fixed": np.asarray(self.artists["fixed"].get_array()),
            "difference": np.asarray(self.artists["difference"].get_array()),
            "grid_rows": np.stack([line.get_ydata() for line in self.artists["grid"][: self.fixed.shape[-2] // 2]]),
            "displacement_u": np.asarray(self.artists["displacement"].U),
            "title": self.title.get_text(),
        }

    def _ipython_display_(self) -> None:
        display(self.widget)


class LambdaScrubber:
    """The per-pair optimiser's result for one pair, redrawn for each λ of a sweep: the warped
    moving image, its difference to the fixed image, and the deformation grid over the moving
    image, titled with that λ's similarity loss, regulariser and folded cells.

    results: {λ: helpers.losses.Registration} for the same pairs (e.g. from
    `helpers.classical.register_pairwise` run once per λ); moving, fixed: those pairs'
    images [B, 1, H, W]; pair: which pair to show; value: the λ shown first.
    """

    def __init__(self, results: dict, moving, fixed, pair: int = 0, value=None):
        if not results:
            raise ValueError("results is empty: pass {λ: registration} for at least one λ")
        lambdas = sorted(results)
        if value is None:
            value = lambdas[0]
        if value not in results:
            raise ValueError(f"value must be one of the swept λ {lambdas}, got {value!r}")
        if not 0 <= pair < len(moving):
            raise ValueError(f"pair must be in 0..{len(moving) - 1}, got {pair!r}")
        self.results, self.moving, self.fixed, self.pair = results, moving, fixed, pair
        self.slider = widgets.SelectionSlider(options=[(f"{l:g}", l) for l in lambdas], value=value, description="λ",
                                              continuous_update=True)
        self.output = widgets.Output()
        self.figure = Figure(figsize=(8, 2.9))
        axes = self.figure.subplots(1, 3)
        first = results[value]
        self.artists = {
            "warped": show_image(axes[0], first.warped_image_A[pair], "warped moving"),
            "difference": show_difference(axes[1], first.warped_image_A[pair], fixed[pair]),
            "grid": show_grid(axes[2], first.phi_AB_vectorfield[pair], "grid over the moving image", background=moving[pair]),
        }
        self.title = self.figure.suptitle("", fontsize=10)
        self.slider.observe(lambda change: self.render(), names="value")
        self.widget = widgets.VBox([self.slider, self.output])
        self.render()

    def render(self) -> None:
        """Redraw for the slider's λ, then show the figure in the Output."""
        lmbda, pair = self.slider.value, self.pair
        result = self.results[lmbda]
        warped = to_numpy(result.warped_image_A[pair, 0])
        self.artists["warped"].set_data(warped)
        self.artists["difference"].set_data(warped - to_numpy(self.fixed[pair, 0]))
        for line, (x, y) in zip(self.artists["grid"], grid_lines(result.phi_AB_vectorfield[pair])):
            line.set_data(x, y)
        losses = result.losses
        self.title.set_text(f"λ = {lmbda:g}: similarity loss {float(losses.similarity_loss[pair]):.4f}, "
                            f"regulariser {float(losses.bending_energy_loss[pair]):.2f}, folded cells {float(losses.flips[pair]):.0f}")
        png = io.BytesIO()
        self.figure.savefig(png, format="png")
        self.output.clear_output(wait=True)
        with self.output:
            display(Image(data=png.getvalue(), format="png"))

    def shown_arrays(self) -> dict:
        """What is drawn now, as arrays (for tests)."""
        return {
            "warped": np.asarray(self.artists["warped"].get_array()),
            "difference": np.asarray(self.artists["difference"].get_array()),
            "grid_rows": np.stack([line.get_ydata() for line in self.artists["grid"][: self.fixed.shape[-2] // 2]]),
            "title": self.title.get_text(),
        }

    def _ipython_display_(self) -> None:
        display(self.widget)
