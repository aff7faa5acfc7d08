"""Conv output sizes, digits data, CNN and RNN (decoding_gpt.foundations.convnets)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from decoding_gpt.foundations.convnets import (
    DigitsCNN,
    ParityRNN,
    accuracy,
    conv_output_size,
    first_layer_filters,
    load_digits_split,
    make_parity_data,
    train_classifier,
)


@pytest.fixture
def one_thread():
    # Tiny models train far faster on one thread when the machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_conv_output_size_matches_conv2d_and_maxpool():
    configs = itertools.product([4, 7, 13], [1, 2, 3, 4], [1, 2, 3], [0, 1, 2], [1, 2])
    checked = 0
    for n, k, s, p, d in configs:
        if d * (k - 1) + 1 > n + 2 * p:
            continue
        conv = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, bias=False)
        with torch.no_grad():
            expected = conv(torch.zeros(1, 1, n, n)).shape[-1]
        assert conv_output_size(n, k, s, p, d) == expected, (n, k, s, p, d)
        if 2 * p <= k:  # MaxPool2d only allows padding up to half the kernel
            pool = nn.MaxPool2d(k, stride=s, padding=p, dilation=d)
            assert conv_output_size(n, k, s, p, d) == pool(torch.zeros(1, 1, n, n)).shape[-1]
        checked += 1
    assert checked > 150


def test_conv_output_size_rejects_bad_configs():
    with pytest.raises(ValueError, match="exceeds"):
        conv_output_size(3, 5)
    with pytest.raises(ValueError, match="invalid"):
        conv_output_size(8, 3, stride=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(test_fraction=0.25, seed=0)


def test_digits_split(digits):
    x_train, y_train, x_test, y_test = digits
    assert x_train.shape[1:] == (1, 8, 8) and len(x_train) + len(x_test) == 1797
    assert len(x_test) == 449
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert set(y_test.tolist()) == set(range(10))
    again = load_digits_split(test_fraction=0.25, seed=0)
    assert torch.equal(again[3], y_test)
    with pytest.raises(ValueError):
        load_digits_split(test_fraction=1.5)


def test_cnn_shapes_and_quick_training(one_thread, digits):
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits
    model = DigitsCNN()
    assert model(x_test[:3]).shape == (3, 10)
    assert first_layer_filters(model).shape == (8, 3, 3)
    with pytest.raises(ValueError, match="8, 8"):
        model(torch.zeros(2, 1, 28, 28))
    train_classifier(model, x_train, y_train, epochs=3, lr=1e-2)
    with torch.no_grad():
        assert accuracy(model(x_test), y_test) > 0.9


def test_parity_data_matches_python_loop():
    bits, targets = make_parity_data(5, 11, seed=4)
    for row, target in zip(bits.tolist(), targets.tolist(), strict=True):
        running = 0
        for bit, y in zip(row, target, strict=True):
            running ^= bit
            assert y == running


def test_parity_rnn_shapes_and_learning(one_thread):
    torch.manual_seed(0)
    bits, targets = make_parity_data(1024, 8, seed=0)
    model = ParityRNN(hidden=32)
    assert model(bits[:2]).shape == (2, 8, 2)
    losses = train_classifier(model, bits, targets, epochs=10, lr=1e-2)
    assert sum(losses[-5:]) / 5 < 0.1 < losses[0]
    test_bits, test_targets = make_parity_data(256, 8, seed=1)
    with torch.no_grad():
        assert accuracy(model(test_bits), test_targets) > 0.95
