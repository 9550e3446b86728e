"""Small, frozen digit classifiers: the probes for "does this warped image look like a 5?".

Each is trained only on the `classifier` split of the bundled digits, which no registration
network trains on and no evaluation pair is drawn from, so its judgement of a warped image
is not circular. Its accuracy is measured on the `heldout` split. Claims that rest on a
classifier are made with two judges of different architectures (`JUDGES`: a small CNN and an
MLP, trained independently), so that they are not one probe's quirk.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .data import load_digits


class DigitClassifier(nn.Module):
    """A LeNet-style CNN: [B, 1, 28, 28] in [0, 1] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2)
        self.dense = nn.Linear(16 * 7 * 7, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.dense(x.flatten(1))


class DigitMLP(nn.Module):
    """A second, independent kind of judge: a one-hidden-layer perceptron on the raw pixels,
    [B, 1, 28, 28] in [0, 1] -> logits [B, 10]. It shares no architecture with the CNN, so a
    claim that both judges support is not an artefact of convolutions."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.hidden = nn.Linear(28 * 28, hidden)
        self.out = nn.Linear(hidden, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(images.flatten(1))))


ARCHITECTURES = {"cnn": DigitClassifier, "mlp": DigitMLP}
# The two judges the chapters use: different architectures, different seeds, same data.
JUDGES = {"CNN judge": dict(architecture="cnn", seed=0), "MLP judge": dict(architecture="mlp", seed=1)}


class ClassifierResult(NamedTuple):
    """The frozen classifier (eval mode, no gradients) and its held-out accuracy."""

    model: nn.Module  # a DigitClassifier or a DigitMLP
    heldout_accuracy: float


def labelled_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All ten digits of one bundled split: images [N, 1, 28, 28] and labels [N]."""
    images = [load_digits(digit, split) for digit in range(10)]
    labels = torch.cat([torch.full((len(batch),), digit) for digit, batch in enumerate(images)])
    return torch.cat(images), labels


def train_classifier(
    epochs: int = 20, batch_size: int = 50, lr: float = 2e-3, seed: int = 0, architecture: str = "cnn"
) -> ClassifierResult:
    """Train a `DigitClassifier` ("cnn") or a `DigitMLP` ("mlp") on the `classifier` split (with
    ±2-pixel random shifts), freeze, and measure accuracy on the `heldout` split. Seeded and
    deterministic on the CPU."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # sums in one order, so the judge does not depend on the core count
    try:
        return _train(ARCHITECTURES[architecture], epochs, batch_size, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _train(architecture: type, epochs: int, batch_size: int, lr: float, seed: int) -> ClassifierResult:
    torch.manual_seed(seed)
    model = architecture()
    generator = torch.Generator().manual_seed(seed)
    images, labels = labelled_split("classifier")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
            shifted = torch.roll(images[batch], shifts=shifts, dims=(2, 3))
            loss = F.cross_entropy(model(shifted), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    heldout_images, heldout_labels = labelled_split("heldout")
    accuracy = (predict_proba(model, heldout_images).argmax(1) == heldout_labels).float().mean().item()
    return ClassifierResult(model, accuracy)


def predict_proba(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [..., 10] for images [..., 1, 28, 28] (any leading shape)."""
    leading = images.shape[:-3]
    with torch.no_grad():
        logits = model(images.reshape(-1, *images.shape[-3:]))
    return logits.softmax(-1).reshape(*leading, 10)
