"""A small, frozen digit classifier: the probe for "does this warped image look like a 5?".

It is trained only on the `classifier` split of the bundled digits, which no registration
network trains on and no evaluation pair is drawn from, so its judgement of a warped image
is not circular. Its accuracy is measured on the `heldout` split.
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


class ClassifierResult(NamedTuple):
    """The frozen classifier (eval mode, no gradients) and its held-out accuracy."""

    model: DigitClassifier
    heldout_accuracy: float


def labelled_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All ten digits of one bundled split: images [N, 1, 28, 28] and labels [N]."""
    images = [load_digits(digit, split) for digit in range(10)]
    labels = torch.cat([torch.full((len(batch),), digit) for digit, batch in enumerate(images)])
    return torch.cat(images), labels


def train_classifier(epochs: int = 20, batch_size: int = 50, lr: float = 2e-3, seed: int = 0) -> ClassifierResult:
    """Train on the `classifier` split (with ±2-pixel random shifts), freeze, and measure
    accuracy on the `heldout` split. Seeded and deterministic on the CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = labelled_split("classifier")
    model = DigitClassifier()
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


def predict_proba(model: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [..., 10] for images [..., 1, 28, 28] (any leading shape)."""
    leading = images.shape[:-3]
    with torch.no_grad():
        logits = model(images.reshape(-1, *images.shape[-3:]))
    return logits.softmax(-1).reshape(*leading, 10)
