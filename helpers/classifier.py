"""Frozen digit classifiers, the *judges* of "does this warped image look like a 5?".

Three judges of three architectures ship with the package (`JUDGES`, `load_judges`), trained
once by `scripts/train_checkpoints.py --group judges` on the `classifier` split of MNIST (5,996
images, which no registration network trains on and no evaluation pair is drawn from, so a
judge's verdict on a warped image is not circular), each image turned, scaled and shifted a
little at random every time it is drawn. Each must reach 98% accuracy on MNIST's test set, with
recall for 5 and 7 of at least 97% (`tests/test_classifier.py`; chapter 04 shows each judge's
confusion and calibration).

Beside them, one judge that learned nothing: `NearestNeighbourJudge` calls an image the digit
of its nearest reference image (by pixel distance), so a claim it supports is not a trained
network's quirk.
"""

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .data import load_digits, random_affine

JUDGE_FORMAT = "helpers-judge"
JUDGE_FORMAT_VERSION = 1
JUDGES_FOLDER = Path(__file__).with_name("checkpoints")


class DigitClassifier(nn.Module):
    """A LeNet-style CNN (two 5 × 5 convolutions with pooling, then two dense layers):
    [B, 1, 28, 28] in [0, 1] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.dense = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.out(F.relu(self.dense(x.flatten(1))))


class ShallowCNN(nn.Module):
    """One convolution layer (32 filters, 5 × 5, max-pooled over 4 × 4 windows) and a dense
    layer: what a single layer of local features and a perceptron on top can judge.
    [B, 1, 28, 28] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 5, padding=2)
        self.dense = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(images)), 4)
        return self.out(F.relu(self.dense(x.flatten(1))))


class AllConvolutional(nn.Module):
    """Five 3 × 3 convolutions (two of stride 2), a 1 × 1 convolution to ten maps, and their
    average over the image: no dense layer and no pooling window, so every class score is a sum
    of local evidence from anywhere in the image. [B, 1, 28, 28] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.Conv2d(64, 64, 3, padding=1),
        ])
        self.out = nn.Conv2d(64, 10, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.out(x).mean((2, 3))


class DigitMLP(nn.Module):
    """A one-hidden-layer perceptron on the raw pixels, [B, 1, 28, 28] -> logits [B, 10]. Not a
    shipped judge: trained on the judges' split it stays under 98% on MNIST's test set."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.hidden = nn.Linear(28 * 28, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(images.flatten(1))))


ARCHITECTURES = {"cnn": DigitClassifier, "shallow": ShallowCNN, "allconv": AllConvolutional, "mlp": DigitMLP}


class JudgeRecipe(NamedTuple):
    """How a shipped judge is trained (`train_classifier`'s arguments) and the file it ships in."""

    architecture: str
    seed: int
    epochs: int

    @property
    def file(self) -> str:
        return f"judge_{self.architecture}.pt"


#: The shipped judges, by the name the chapters print.
JUDGES = {
    "CNN judge": JudgeRecipe("cnn", seed=0, epochs=20),
    "shallow-CNN judge": JudgeRecipe("shallow", seed=1, epochs=30),
    "all-conv judge": JudgeRecipe("allconv", seed=2, epochs=40),
}
#: The name of the judge-free nearest-neighbour judge, where chapters list it beside `JUDGES`.
NEAREST = "nearest-image judge"


class ClassifierResult(NamedTuple):
    """A frozen judge (eval mode, no gradients) and its accuracy on the `heldout` split (MNIST's test set)."""

    model: nn.Module
    heldout_accuracy: float


def labelled_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All ten digits of one split: images [N, 1, 28, 28] and labels [N] (int64), digit by digit."""
    images = [load_digits(digit, split) for digit in range(10)]
    labels = torch.cat([torch.full((len(batch),), digit) for digit, batch in enumerate(images)])
    return torch.cat(images), labels


def train_classifier(epochs: int = 20, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     architecture: str = "cnn", augment: float = 1.0) -> ClassifierResult:
    """Train one of `ARCHITECTURES` on the `classifier` split, freeze it, and measure its accuracy
    on the `heldout` split.

    Adam with a one-cycle learning rate peaking at `lr`, on batches of `batch_size`; every image
    is turned, scaled and shifted at random each time it is drawn (`helpers.data.random_affine`
    with amount `augment`; 0 leaves them as they are). Seeded and deterministic on the CPU, in one
    thread, so the judge does not depend on the core count.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _train(ARCHITECTURES[architecture], epochs, batch_size, lr, seed, augment)
    finally:
        torch.set_num_threads(threads)
    return ClassifierResult(model, heldout_accuracy(model))


def _train(architecture: type, epochs: int, batch_size: int, lr: float, seed: int, augment: float) -> nn.Module:
    torch.manual_seed(seed)
    model = architecture()
    generator = torch.Generator().manual_seed(seed)
    images, labels = labelled_split("classifier")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = (len(images) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * batches)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            inputs = random_affine(images[batch], augment, generator) if augment else images[batch]
            loss = F.cross_entropy(model(inputs), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval().requires_grad_(False)


def heldout_accuracy(model: nn.Module) -> float:
    """Share of MNIST's 10,000 test images (the `heldout` split) that `model` classifies correctly."""
    images, labels = labelled_split("heldout")
    return (predict_proba(model, images).argmax(-1) == labels).float().mean().item()


def predict_proba(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [..., 10] for images [..., 1, 28, 28] (any leading shape)."""
    leading = images.shape[:-3]
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in images.reshape(-1, *images.shape[-3:]).split(4096)])
    return logits.softmax(-1).reshape(*leading, 10)


# --- shipped judges -----------------------------------------------------------------------


class JudgeError(ValueError):
    """A judge file that is missing, unreadable, of another format or inconsistent."""


def judge_path(recipe: JudgeRecipe) -> Path:
    return JUDGES_FOLDER / recipe.file


def save_judge(path: str | os.PathLike, model: nn.Module, recipe: JudgeRecipe) -> None:
    """Write a judge's weights (float32) with the recipe that made it."""
    if type(model) is not ARCHITECTURES[recipe.architecture]:
        raise ValueError(f"the model is a {type(model).__name__}, but the recipe says {recipe.architecture!r}")
    payload = {"format": JUDGE_FORMAT, "format_version": JUDGE_FORMAT_VERSION, "recipe": recipe._asdict(),
               "weights": {name: tensor.detach().float().clone() for name, tensor in model.state_dict().items()}}
    torch.save(payload, path)


def load_judge(path: str | os.PathLike) -> tuple[nn.Module, JudgeRecipe]:
    """A judge written by `save_judge`, frozen, and its recipe; JudgeError if the file is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise JudgeError(f"no judge at {path}: `python scripts/train_checkpoints.py --group judges` trains them") from None
    except Exception as error:
        raise JudgeError(f"{path} is not a readable judge file (corrupt or truncated?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != JUDGE_FORMAT or payload.get("format_version") != JUDGE_FORMAT_VERSION:
        raise JudgeError(f"{path} is not a {JUDGE_FORMAT!r} file of version {JUDGE_FORMAT_VERSION}")
    try:
        recipe = JudgeRecipe(**payload["recipe"])
        model = ARCHITECTURES[recipe.architecture]()
        model.load_state_dict(payload["weights"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise JudgeError(f"{path}: its recipe or weights do not describe a judge: {error}") from error
    return model.eval().requires_grad_(False), recipe


def load_judges(names=None) -> dict[str, ClassifierResult]:
    """The shipped judges (`JUDGES`, or those of `names`), frozen, each with its accuracy on
    MNIST's test set (measured now, not stored)."""
    names = list(JUDGES) if names is None else list(names)
    unknown = [name for name in names if name not in JUDGES]
    if unknown:
        raise ValueError(f"unknown judge(s) {unknown}; the shipped judges are {list(JUDGES)}")
    judges = {}
    for name in names:
        model, recipe = load_judge(judge_path(JUDGES[name]))
        if recipe != JUDGES[name]:
            raise JudgeError(f"{judge_path(JUDGES[name])} was trained with {recipe}, but JUDGES says {JUDGES[name]}")
        judges[name] = ClassifierResult(model, heldout_accuracy(model))
    return judges


# --- a judge that learned nothing ---------------------------------------------------------


class NearestNeighbourJudge(nn.Module):
    """Calls an image the digit of its nearest reference image: the judge-free measure.

    The logit of digit d is −(the squared pixel distance to the nearest reference image of d) /
    `temperature`, so the top class is the nearest image's digit (1-nearest-neighbour), and
    P(5) is a soft version of "the nearest image is a 5". The references default to the
    `classifier` split (5,996 images that no registration network saw). It learns nothing and
    shares nothing with the trained judges, so a shift toward "5" that it sees too is a shift of
    the pixels toward real 5s, not a network's quirk. [B, 1, 28, 28] -> logits [B, 10].
    """

    def __init__(self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None, temperature: float = 4.0):
        super().__init__()
        if (images is None) != (labels is None):
            raise ValueError("pass both images and labels, or neither (the classifier split)")
        if images is None:
            images, labels = labelled_split("classifier")
        if images.ndim != 4 or images.shape[1:] != (1, 28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"references must be images [N, 1, 28, 28] with labels [N], got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        missing = sorted(set(range(10)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"the references hold no image of digit(s) {missing}; every digit needs one")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        flat = images.flatten(1).double()
        self.register_buffer("references", flat)
        self.register_buffer("squared_norms", (flat * flat).sum(1))
        self.register_buffer("labels", labels.long())
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        nearest = class_distances(images, self.references, self.squared_norms, self.labels)
        return (-nearest / self.temperature).float()


def class_distances(images: torch.Tensor, references: torch.Tensor, squared_norms: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """[B, 10]: the squared pixel distance from each image to the nearest reference of each digit
    (references [N, 784] float64 with their squared norms [N] and labels [N])."""
    flat = images.flatten(1).double()
    distances = ((flat * flat).sum(1, keepdim=True) - 2 * flat @ references.T + squared_norms).clamp_min(0)
    nearest = torch.full((len(flat), 10), float("inf"), dtype=torch.float64)
    return nearest.scatter_reduce(1, labels.expand(len(flat), -1), distances, reduce="amin")


# --- what a judge gets right and how sure it is --------------------------------------------


def confusion(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[10, 10] counts: row = true digit, column = the judge's top class, for probabilities [N, 10]
    (e.g. `predict_proba(model, images)`) of images with true labels [N]."""
    if probabilities.ndim != 2 or probabilities.shape[1] != 10 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"need probabilities [N, 10] and labels [N], got {tuple(probabilities.shape)} and {tuple(labels.shape)}")
    return torch.bincount(labels.long() * 10 + probabilities.argmax(-1), minlength=100).reshape(10, 10)


class Reliability(NamedTuple):
    """Calibration of a judge's top-class confidence, in equal-width bins of confidence.

    confidence, accuracy: [bins] mean confidence and share correct of the images in each bin
    (NaN for an empty bin); count: [bins]; expected_calibration_error: the count-weighted mean
    of |accuracy − confidence| (0 for a perfectly calibrated judge)."""

    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    expected_calibration_error: float


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Reliability:
    """The reliability of probabilities [N, 10] against true labels [N]."""
    if probabilities.ndim != 2 or probabilities.shape[1] != 10 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"need probabilities [N, 10] and labels [N], got {tuple(probabilities.shape)} and {tuple(labels.shape)}")
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).long().clamp(0, bins - 1)
    count = torch.bincount(which, minlength=bins)
    mean = lambda values: torch.bincount(which, values, minlength=bins) / count  # noqa: E731  (NaN where empty)
    mean_confidence, mean_accuracy = mean(confidence.double()), mean(correct)
    filled = count > 0
    error = ((mean_accuracy - mean_confidence).abs()[filled] * count[filled]).sum() / count.sum()
    return Reliability(mean_confidence, mean_accuracy, count, error.item())
