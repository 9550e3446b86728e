"""Training: Adam over random pairs of one digit, and checkpoints that know their config.

    result = train(TrainConfig(digit=5, seed=0))
    save_checkpoint("fives.pt", result)
    net = load_checkpoint("fives.pt").net

Seeded and deterministic on the CPU (the same config gives the same weights, bit for
bit, on the same machine and torch version); uses CUDA when it is available.
"""

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from .data import load_digits, random_affine, random_pairs
from .engine import fused
from .engine.fused import training_loss
from .losses import BendingLoss, DiffusionRegularizedNet
from .models import inner_fcnet, post_network

CHECKPOINT_FORMAT = "helpers-registration-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS = Path(__file__).with_name("checkpoints")  # shipped with the package
ENSEMBLE_SEEDS = (0, 1, 2, 3, 4)  # every shipped recipe is trained with these seeds
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
GUARD_WINDOW = 100  # steps of gradient-norm history the spike guard compares against
LR_SCHEDULES = ("constant", "linear")
PARADIGMS = ("unsupervised", "supervised")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so a checkpoint).

    The post gives the network (the FCNet acting 9 times), λ = 0.05, SSD and the data (MNIST's
    5s); the optimiser settings are this collection's: Adam with learning rate 1e-3 for 800
    steps on batches of 128 random pairs of training-split 5s.
    `train_size`: train on only the first that many images of the digit's training split
    (None, the default: all of them, 4,879 5s); the training-set size is a measured factor
    (chapters 03 and 04).
    `grad_clip` caps the global gradient norm before each Adam step (None: no cap).
    `spike_guard` skips the Adam step when the gradient norm is not finite or exceeds that
    multiple of the median norm of the previous `GUARD_WINDOW` steps (None: never skip); see
    benchmarks/STABILITY.md for why.
    `lr_schedule` is "constant" (the post's) or "linear": the learning rate of step s (0, 1,
    …) is then lr · (1 − s / steps), falling to lr / steps at the last step.
    `decay_after`: past that many steps the learning rate is further multiplied by
    decay_after / s (None: never). Runs of up to `decay_after` steps, the post's 800 among
    them, are untouched; longer runs at the post's constant rate can drift into instability,
    which the decay prevented in every run measured (benchmarks/STABILITY.md).
    `augment` > 0 turns, scales and shifts every training image at random before it is used
    (`helpers.data.random_affine` with that amount; 0, the post's, leaves them as they are).
    It narrows the gap between training and held-out images (chapter 03, section 8).
    `paradigm` is how the network learns: "unsupervised" (the post's: through the loss,
    by `train`) or "supervised" (Quicksilver's: imitating the fields a per-pair optimiser
    found with this λ, by `helpers.supervised.train_supervised`; chapter 07).
    """

    digit: int = 5
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    lmbda: float = 0.05
    registration_steps: int = 9
    grad_clip: float | None = None
    spike_guard: float | None = 3.0
    lr_schedule: str = "constant"
    decay_after: int | None = 800
    augment: float = 0.0
    seed: int = 0
    split: str = "train"
    train_size: int | None = None
    paradigm: str = "unsupervised"

    def __post_init__(self):
        for name in ("digit", "steps", "batch_size", "registration_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"TrainConfig.{name} must be an int, got {value!r}")
        if self.steps < 1 or self.batch_size < 1 or self.registration_steps < 1:
            raise ValueError(f"TrainConfig needs steps >= 1, batch_size >= 1, registration_steps >= 1: {self}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.train_size is not None and (isinstance(self.train_size, bool) or not isinstance(self.train_size, int)
                                            or self.train_size < 2):
            raise ValueError(f"TrainConfig.train_size must be None or an int >= 2, got {self.train_size!r}")
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"TrainConfig.paradigm must be one of {PARADIGMS}, got {self.paradigm!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if isinstance(self.augment, bool) or not isinstance(self.augment, (int, float)) or not (0 <= self.augment < math.inf):
            raise ValueError(f"TrainConfig.augment must be a finite number >= 0, got {self.augment!r}")
        if self.decay_after is not None and (isinstance(self.decay_after, bool) or not isinstance(self.decay_after, int)
                                             or self.decay_after < 1):
            raise ValueError(f"TrainConfig.decay_after must be None or an int >= 1, got {self.decay_after!r}")
        for name in ("grad_clip", "spike_guard"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be None or a finite number > 0, got {value!r}")


class TrainingDiverged(FloatingPointError):
    """Training produced non-finite values; `history` holds every step up to the failure."""

    def __init__(self, message: str, history: dict):
        super().__init__(message)
        self.history = history


class TrainResult(NamedTuple):
    """The trained network (in eval mode, on the CPU), its config, and its history.

    history maps each loss field, "grad_norm" (before any clipping) and "skipped" (1 where
    the spike guard skipped the update) to a float64 tensor [steps] of per-step values on
    the training batches. path says how `train` computed the loss: "fused" (helpers.engine.fused,
    checked against the modules on the first batch) or "modules" (`net(moving, fixed)`);
    None where that is not known (a loaded checkpoint).
    """

    net: DiffusionRegularizedNet
    config: TrainConfig
    history: dict
    path: str | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_network(config: TrainConfig) -> DiffusionRegularizedNet:
    """A fresh network for `config`, initialised from `config.seed`."""
    torch.manual_seed(config.seed)
    return post_network(size=28, lmbda=config.lmbda, steps=config.registration_steps)


def train(
    config: TrainConfig = TrainConfig(),
    images: torch.Tensor | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    stop: Callable[[int, DiffusionRegularizedNet], bool] | None = None,
    net: DiffusionRegularizedNet | None = None,
) -> TrainResult:
    """Train the post's network from scratch with Adam on random pairs.

    images: [N, 1, 28, 28] to draw pairs from; default `training_images(config)`. Shows a tqdm progress bar (terminal or
    notebook) unless `progress=False`. `stop(step, net)`, if given, is called after
    every update; when it returns True, training ends there (the history then covers
    steps 0..step only). `net`, if given, is the network trained (in place, from its
    current weights) instead of `build_network(config)`: any `DiffusionRegularizedNet`,
    e.g. around an edited or subclassed FCNet; `config` then sets only the optimisation.

    The loss of every step is `net(moving, fixed)`'s. For the post's unmodified network it is
    computed by helpers.engine.fused, faster and equal to float rounding, once that has been
    checked against the modules on the first batch (`fused.cross_check`); for anything else it
    is `net(moving, fixed)` itself.
    One line (on stderr) says which, and why; so does the result's `path`.
    """
    if config.paradigm != "unsupervised":
        raise ValueError(
            f"train() trains through the loss (paradigm 'unsupervised'); a {config.paradigm!r} config is "
            "trained by helpers.supervised.train_supervised"
        )
    device = torch.device(device) if device is not None else default_device()
    if images is None:
        images = training_images(config)
    images = images.to(device)
    if net is None:
        net = build_network(config)
    elif not isinstance(net, DiffusionRegularizedNet):
        raise ValueError(f"train(net=...) needs a DiffusionRegularizedNet (a loss module), got {type(net).__name__}")
    net = net.to(device)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    pairs = torch.Generator().manual_seed(config.seed)
    fields = list(BendingLoss._fields) + ["grad_norm", "skipped"]
    history = torch.zeros(len(fields), config.steps, dtype=torch.float64)

    bar = tqdm(range(config.steps), desc=f"training on {config.digit}s", disable=not progress, mininterval=0.5)
    for step in bar:
        moving, fixed = random_pairs(images, config.batch_size, pairs)
        if config.augment:
            moving, fixed = (random_affine(batch, config.augment, pairs) for batch in (moving, fixed))
        try:
            if step == 0:
                path = choose_path(net, moving, fixed)
            loss = training_loss(net, moving, fixed) if path == "fused" else net(moving, fixed)
            if not loss.all_loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on the network's parameters: does its forward return a constant?"
                )
            if not torch.isfinite(loss.all_loss):
                raise FloatingPointError(f"the loss is {loss.all_loss.item()}")
        except FloatingPointError as error:
            last = history[0, :step][-1].item() if step else float("nan")
            raise TrainingDiverged(
                f"training diverged at step {step} (last finite loss {last:.4g}): {error}. "
                "Try the spike guard (TrainConfig.spike_guard) or a lower learning rate.",
                dict(zip(fields, history[:, :step])),
            ) from error
        optimizer.zero_grad(set_to_none=True)
        loss.all_loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            net.parameters(), config.grad_clip if config.grad_clip is not None else math.inf
        )
        recent = history[-2, max(0, step - GUARD_WINDOW) : step]
        norm = float(grad_norm)
        skip = config.spike_guard is not None and (not math.isfinite(norm) or is_spike(norm, recent, config.spike_guard))
        if not skip:
            optimizer.param_groups[0]["lr"] = learning_rate(config, step)
            optimizer.step()
        values = [*(value.detach() for value in loss), grad_norm, torch.tensor(float(skip))]
        history[:, step] = torch.stack([value.to(grad_norm.device) for value in values]).double().cpu()
        if step % 50 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{history[0, step]:.4f}", refresh=False)
        if stop is not None and stop(step, net):
            history = history[:, : step + 1]
            break
    bar.close()
    net.eval()
    return TrainResult(net.cpu(), config, dict(zip(fields, history)), path)


def training_images(config: TrainConfig) -> torch.Tensor:
    """The images a config trains on: its digit's `split`, the first `train_size` of them if set."""
    images = load_digits(config.digit, config.split)
    if config.train_size is not None:
        if config.train_size > len(images):
            raise ValueError(f"TrainConfig.train_size is {config.train_size}, but the {config.split!r} split "
                             f"holds {len(images)} {config.digit}s")
        images = images[: config.train_size]
    return images


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of update `step` (0, 1, …): `config.lr`, times the linear schedule's
    factor, times decay_after / step past `decay_after` steps."""
    rate = config.lr
    if config.lr_schedule == "linear":
        rate = rate * (1 - step / config.steps)
    if config.decay_after is not None and step > config.decay_after:
        rate = rate * (config.decay_after / step)
    return rate


def choose_path(net: DiffusionRegularizedNet, moving: torch.Tensor, fixed: torch.Tensor) -> str:
    """"fused" when helpers.engine.fused computes what `net(moving, fixed)` computes for this network
    (`fused.why_not`) and agrees with it on this batch (`fused.cross_check`), else "modules".
    Prints one line that says which, and why."""
    reason = fused.why_not(net, moving, fixed)
    if reason is None:
        reason = fused.cross_check(net, moving, fixed)
        if reason is not None:
            reason = f"helpers.engine.fused disagrees with the modules on the first batch: {reason}"
    if reason is None:
        print(
            "train: the loss is computed by helpers.engine.fused (the post's network, unmodified; "
            "checked against the modules on the first batch)",
            file=sys.stderr,
        )
        return "fused"
    print(f"train: the loss is computed through the modules, net(moving, fixed): {reason}", file=sys.stderr)
    return "modules"


def checkpoint_path(name: str) -> Path:
    """Where the shipped checkpoint `name` (e.g. "fives") lives: helpers/checkpoints/NAME.pt.

    These files are made by `scripts/train_checkpoints.py` and read by the chapters; nothing
    else writes them (`save_checkpoint` refuses to). Your own networks go to `my_checkpoint_path`.
    """
    return CHECKPOINTS / f"{_checked_name(name)}.pt"


def my_checkpoint_path(name: str) -> Path:
    """Where a network you trained yourself is saved: $HELPERS_CHECKPOINTS/NAME.pt when that
    variable is set (the tests point it at a temporary folder), else runs/checkpoints/NAME.pt
    in the nearest folder at or above the working directory that has a `figures/` folder (the
    repository, when run from notebooks/), else in the working directory. Never the shipped
    folder, so retraining in a chapter cannot replace a network that later chapters load."""
    if "HELPERS_CHECKPOINTS" in os.environ:
        if not os.environ["HELPERS_CHECKPOINTS"].strip():
            raise ValueError("$HELPERS_CHECKPOINTS is set but empty; set it to a folder, or unset it")
        folder = Path(os.environ["HELPERS_CHECKPOINTS"])
    else:
        root = next((folder for folder in [Path.cwd(), *Path.cwd().parents] if (folder / "figures").is_dir()), Path.cwd())
        folder = root / "runs" / "checkpoints"
    return folder / f"{_checked_name(name)}.pt"


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"checkpoint names are plain words like 'fives', got {name!r}")
    return name


def member_name(base: str, seed: int) -> str:
    """The shipped checkpoint of `base` trained with `seed`: 'fives' for seed 0 (the network the
    chapters show), 'fives_seed_3' for seed 3."""
    _checked_name(base)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return base if seed == 0 else f"{base}_seed_{seed}"


def load_ensemble(base: str, seeds=ENSEMBLE_SEEDS) -> list["TrainResult"]:
    """The networks of `base` (e.g. "fives") for every seed in `seeds`: the same recipe, trained
    independently (different initial weights and pairs). Their configs must agree in everything
    but the seed. They are the shipped ones (`checkpoint_path`), made by scripts/train_checkpoints.py."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"load_ensemble needs at least one seed and no seed twice, got {seeds}")
    members = [load_checkpoint(checkpoint_path(member_name(base, seed))) for seed in seeds]
    recipes = {dataclasses.replace(member.config, seed=0) for member in members}
    if len(recipes) != 1:
        raise CheckpointError(f"the checkpoints of {base!r} were trained with different recipes: {sorted(map(str, recipes))}")
    if [member.config.seed for member in members] != seeds:
        raise CheckpointError(f"the checkpoints of {base!r} carry seeds {[m.config.seed for m in members]}, expected {seeds}")
    return members


def is_spike(grad_norm: float, recent: torch.Tensor, factor: float) -> bool:
    """True when `grad_norm` exceeds `factor` × the median of the finite `recent` norms (≥ 20 of them)."""
    recent = recent[torch.isfinite(recent)]
    return len(recent) >= 20 and grad_norm > factor * float(recent.median())


def save_checkpoint(path: str | os.PathLike, result: TrainResult, *, weights: str = "float32", shipped: bool = False) -> None:
    """Write the inner network's weights with the config and history that produced them.

    `weights="float16"` stores them rounded to half precision (half the size; the seed
    ensembles ship that way, and loading gives the rounded network back in float32).
    Writing into the shipped folder (helpers/checkpoints/, or below it) is refused unless
    `shipped=True`, which only `scripts/train_checkpoints.py` passes: save your own networks
    under `my_checkpoint_path(name)`.

    A checkpoint holds the inner FCNet's weights and rebuilds the rest from the config, so only
    the network `build_network(result.config)` describes can be saved: one you trained with
    `train(config, net=...)` around an edited or subclassed FCNet, or with another λ or number
    of steps than its config says, is refused (save its `state_dict()` with torch.save instead).
    """
    if weights not in WEIGHT_DTYPES:
        raise ValueError(f"weights must be one of {sorted(WEIGHT_DTYPES)}, got {weights!r}")
    path = Path(path)
    if not shipped and path.resolve().is_relative_to(CHECKPOINTS.resolve()):
        raise ValueError(
            f"{path} is in the shipped folder {CHECKPOINTS}, whose networks later chapters load; "
            f"save your own network under my_checkpoint_path({path.stem!r}) (or another name) instead"
        )
    world = fused.world_of(result.net)
    config = result.config
    if world is None or world[1] != config.registration_steps or result.net.lmbda != config.lmbda:
        raise ValueError(
            f"save_checkpoint stores the post's network as its config describes it ({config.registration_steps} "
            f"steps of one FCNet, SSD, λ = {config.lmbda}); this one is "
            + ("another kind of network" if world is None else f"{world[1]} steps with λ = {result.net.lmbda}")
            + ". Save its state_dict() with torch.save instead."
        )
    fcnet = {name: tensor.detach().cpu().to(WEIGHT_DTYPES[weights]) for name, tensor in inner_fcnet(result.net).state_dict().items()}
    overflowed = [name for name, tensor in fcnet.items() if not torch.isfinite(tensor).all()]
    if overflowed:
        raise ValueError(f"weights {overflowed} are not finite in {weights} (too large for it?); save them as float32")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": dataclasses.asdict(result.config),
        "weights": weights,
        "fcnet": fcnet,
        "history": {name: values.cpu() for name, values in result.history.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


class CheckpointError(ValueError):
    """A checkpoint file that is unreadable, of another format or version, or inconsistent."""


def load_checkpoint(path: str | os.PathLike) -> TrainResult:
    """Read a checkpoint written by `save_checkpoint`; raise CheckpointError if it is not one."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT!r} file")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has format version {payload.get('format_version')!r}; this helpers reads "
            f"version {CHECKPOINT_VERSION}. Re-create it with the scripts that made it."
        )
    try:
        config = TrainConfig(**payload["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid config: {error}") from error
    stored, weights = payload.get("weights", "float32"), payload.get("fcnet")
    if not isinstance(stored, str) or stored not in WEIGHT_DTYPES or not isinstance(weights, dict) or any(
        not isinstance(tensor, torch.Tensor) or tensor.dtype != WEIGHT_DTYPES[stored] for tensor in weights.values()
    ):
        raise CheckpointError(f"{path}: its weights are not all {stored!r} tensors, as the file says")
    net = build_network(config)
    try:
        inner_fcnet(net).load_state_dict(weights)  # copies into the float32 parameters
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit the network its config describes: {error}") from error
    net.eval()
    return TrainResult(net, config, dict(payload.get("history", {})))
