r"""Convolutional and recurrent networks for lecture 04, on offline data.

Convolution output size
-----------------------
A convolution (or pooling) with kernel size :math:`k`, stride :math:`s`, zero padding
:math:`p` and dilation :math:`d` maps a length-:math:`n` axis to

.. math::  n_{out} = \Big\lfloor \frac{n + 2p - d(k - 1) - 1}{s} \Big\rfloor + 1,

which for :math:`d = 1` is :math:`\lfloor (n + 2p - k)/s \rfloor + 1`: the number of
positions the (dilated) kernel fits into the padded input, stepping by :math:`s`.

Data
----
:func:`load_digits_split` wraps scikit-learn's ``load_digits`` (1,797 grey 8x8 digits
shipped inside the wheel, so nothing is downloaded). :func:`make_parity_data` makes the
sequence task for the RNN: given bits :math:`x_1..x_T`, predict at every step the prefix
parity :math:`y_t = (x_1 + \dots + x_t) \bmod 2`.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = [
    "DigitsCNN",
    "ParityRNN",
    "accuracy",
    "conv_output_size",
    "first_layer_filters",
    "load_digits_split",
    "make_parity_data",
    "train_classifier",
]


def conv_output_size(
    n: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Length of one spatial axis after a convolution/pooling layer (see module doc).

    Raises:
        ValueError: a non-positive kernel/stride/dilation, negative padding, or a kernel
            that does not fit into the padded input (PyTorch raises at run time there).
    """
    if kernel_size < 1 or stride < 1 or dilation < 1 or padding < 0 or n < 1:
        raise ValueError(
            f"invalid conv config n={n}, k={kernel_size}, s={stride}, p={padding}, d={dilation}"
        )
    span = dilation * (kernel_size - 1) + 1  # extent of the dilated kernel
    if span > n + 2 * padding:
        raise ValueError(
            f"kernel extent {span} exceeds the padded input {n} + 2*{padding} = {n + 2 * padding}"
        )
    return (n + 2 * padding - span) // stride + 1


def load_digits_split(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[
    Float[Tensor, "n 1 8 8"], Int[Tensor, " n"], Float[Tensor, "m 1 8 8"], Int[Tensor, " m"]
]:
    """sklearn's 8x8 digits as image tensors scaled to [0, 1], split at random (seeded).

    Returns ``(x_train, y_train, x_test, y_test)``.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


class DigitsCNN(nn.Module):
    """conv3x3(1->c1) -> ReLU -> maxpool2 -> conv3x3(c1->c2) -> ReLU -> maxpool2 -> linear.

    With padding 1 the 3x3 convolutions keep 8x8 (and 4x4); each pool halves it, so the
    classifier sees ``c2 * 2 * 2`` features.
    """

    def __init__(self, channels: tuple[int, int] = (8, 16), n_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        side = conv_output_size(conv_output_size(8, 2, stride=2), 2, stride=2)
        self.head = nn.Linear(c2 * side * side, n_classes)

    def forward(self, x: Float[Tensor, "batch 1 8 8"]) -> Float[Tensor, "batch classes"]:
        if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"expected images [batch, 1, 8, 8], got {tuple(x.shape)}")
        h = self.pool(torch.relu(self.conv1(x)))  # (B, c1, 4, 4)
        h = self.pool(torch.relu(self.conv2(h)))  # (B, c2, 2, 2)
        return self.head(h.flatten(1))


def make_parity_data(
    n: int, length: int, seed: int = 0
) -> tuple[Int[Tensor, "n length"], Int[Tensor, "n length"]]:
    """Random bit strings and their prefix parities ``y_t = cumsum(x)_t mod 2``."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, length), generator=generator)
    return bits, bits.cumsum(dim=1) % 2


class ParityRNN(nn.Module):
    """A vanilla (tanh) RNN reading one bit per step and emitting 2 logits per step.

    The task needs one bit of memory, flipped by every 1: a recurrent update can
    represent it exactly, whatever the sequence length.
    """

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(input_size=2, hidden_size=hidden, batch_first=True)
        self.readout = nn.Linear(hidden, 2)

    def forward(self, bits: Int[Tensor, "batch length"]) -> Float[Tensor, "batch length 2"]:
        inputs = nn.functional.one_hot(bits, 2).float()  # (B, T, 2)
        states, _ = self.rnn(inputs)  # (B, T, hidden)
        return self.readout(states)


def accuracy(logits: Float[Tensor, "*batch classes"], labels: Int[Tensor, "*batch"]) -> float:
    """Fraction of positions where the arg-max logit is the label."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Int[Tensor, "*batch"],
    epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Minibatch Adam on cross-entropy (works for [B, C] and per-step [B, T, C] logits).

    Returns the training loss of every step.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            logits = model(x[batch])
            loss = nn.functional.cross_entropy(logits.flatten(0, -2), y[batch].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return losses


def first_layer_filters(model: DigitsCNN) -> np.ndarray:
    """The first conv layer's kernels as a ``[c1, 3, 3]`` array (for plotting)."""
    return model.conv1.weight.detach().cpu().numpy()[:, 0]
