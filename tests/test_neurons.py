"""LIF neuron, perceptron, affine collapse, ReLU interpolation (foundations.neurons)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from decoding_gpt.foundations.neurons import (
    LIFParams,
    affine_chain,
    compose_affine,
    lif_rate_theory,
    lif_rates_simulated,
    make_mlp,
    make_separable_data,
    novikoff_bound,
    perceptron_predict,
    perceptron_train,
    perceptron_update,
    relu_interpolant,
    relu_network,
    simulate_lif,
)

PARAMS = LIFParams()  # tau 10 ms, R 10 MOhm, V_th 15 mV, t_ref 2 ms


def test_simulated_rate_matches_closed_form():
    currents = np.array([1.6, 2.0, 3.0, 5.0])  # all above the rheobase V_th / R = 1.5 nA
    simulated = lif_rates_simulated(currents, duration=200.0, dt=0.01, params=PARAMS)
    np.testing.assert_allclose(simulated, lif_rate_theory(currents, PARAMS), rtol=0.01)


def test_closed_form_period_solves_the_ode():
    # Independent of the rate formula: V(t) = RI (1 - exp(-t / tau)) from reset at 0 must
    # reach V_th exactly one (period - t_ref) after the reset.
    for current in [1.7, 2.5, 8.0]:
        period = 1000.0 / lif_rate_theory(current, PARAMS)
        rise = period - PARAMS.t_ref
        drive = PARAMS.resistance * current
        assert drive * (1 - np.exp(-rise / PARAMS.tau)) == pytest.approx(PARAMS.v_th, rel=1e-9)


def test_subthreshold_rate_is_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log of a negative number would warn
        rates = lif_rate_theory(np.array([0.0, 1.0, 1.5]), PARAMS)
    assert np.array_equal(rates, [0.0, 0.0, 0.0])


def test_subthreshold_potential_follows_exponential_relaxation():
    t, v, spikes = simulate_lif(1.0, duration=50.0, dt=0.005, params=PARAMS)
    assert len(spikes[0]) == 0
    exact = PARAMS.resistance * 1.0 * (1 - np.exp(-t / PARAMS.tau))
    np.testing.assert_allclose(v[:, 0], exact, atol=0.01)  # Euler error is O(dt)


def test_spikes_respect_refractory_period():
    _, _, spikes = simulate_lif(np.array([20.0]), duration=50.0, dt=0.01, params=PARAMS)
    assert len(spikes[0]) > 5
    assert np.diff(spikes[0]).min() >= PARAMS.t_ref


def test_bad_lif_inputs_raise():
    with pytest.raises(ValueError, match="v_reset"):
        LIFParams(v_reset=20.0)
    with pytest.raises(ValueError, match="dt"):
        simulate_lif(2.0, duration=10.0, dt=5.0)
    with pytest.raises(ValueError, match="1-D"):
        simulate_lif(np.ones((2, 2)), duration=10.0)


def test_perceptron_converges_within_mistake_bound():
    x, y, w_true, gamma = make_separable_data(150, margin=0.1, seed=3)
    assert gamma > 0
    assert np.all(np.where(np.c_[x, np.ones(len(x))] @ w_true > 0, 1, -1) == y)
    w, b, n_mistakes, history = perceptron_train(x, y)
    radius = np.linalg.norm(np.c_[x, np.ones(len(x))], axis=1).max()
    assert history[-1] == 0
    assert n_mistakes <= (radius / gamma) ** 2  # Novikoff's bound
    assert np.array_equal(perceptron_predict(x, w, b), y)


def test_novikoff_bound_by_hand_and_scale_free():
    # Two points (1, 0) -> +1 and (-1, 0) -> -1 separated by u = (1, 0, 0): gamma = 1,
    # R = |(1, 0, 1)| = sqrt(2), so the bound is 2, whatever the scale of w_star.
    x, y = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([1.0, -1.0])
    assert novikoff_bound(x, y, np.array([1.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert novikoff_bound(x, y, np.array([5.0, 0.0, 0.0])) == pytest.approx(2.0)
    # A tilted separator has a smaller margin, so a looser bound.
    assert novikoff_bound(x, y, np.array([1.0, 1.0, 0.0])) == pytest.approx(4.0)
    _, _, w_true, gamma = make_separable_data(50, margin=0.1, seed=1)
    x, y, _, _ = make_separable_data(50, margin=0.1, seed=1)
    radius = np.linalg.norm(np.c_[x, np.ones(len(x))], axis=1).max()
    assert novikoff_bound(x, y, w_true) == pytest.approx((radius / gamma) ** 2)
    with pytest.raises(ValueError, match="does not separate"):
        novikoff_bound(x, y, -w_true)
    with pytest.raises(ValueError, match="w_star must be"):
        novikoff_bound(x, y, w_true[:-1])


def test_perceptron_update_learns_from_zero_and_only_from_mistakes():
    w, b = perceptron_update(np.zeros(2), 0.0, np.array([1.0, 2.0]), -1.0, 0.5)
    assert np.array_equal(w, [-0.5, -1.0]) and b == -0.5
    w2, b2 = perceptron_update(w, b, np.array([1.0, 2.0]), -1.0, 0.5)  # now correct
    assert np.array_equal(w2, w) and b2 == b
    with pytest.raises(ValueError, match="-1 or \\+1"):
        perceptron_train(np.zeros((2, 2)), np.array([0.0, 1.0]))


def test_compose_affine_matches_torch_sequential():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Linear(6, 3), torch.nn.Linear(3, 2)
    ).double()
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net]
    weight, bias = compose_affine(layers)
    x = np.random.default_rng(0).normal(size=(10, 4))
    expected = net(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(x @ weight.T + bias, expected, atol=1e-12)
    np.testing.assert_allclose(affine_chain(x, layers), expected, atol=1e-12)
    with pytest.raises(ValueError, match="do not chain"):
        compose_affine([layers[0], layers[2]])


def test_relu_interpolant_equals_numpy_interp():
    knots = np.array([-2.0, -0.5, 0.3, 1.0, 2.5])
    bias, coefs = relu_interpolant(np.cos, knots)
    xs = np.linspace(-2.0, 2.5, 301)
    np.testing.assert_allclose(
        relu_network(xs, knots, bias, coefs), np.interp(xs, knots, np.cos(knots)), atol=1e-12
    )


def test_relu_interpolation_error_is_second_order():
    xs = np.linspace(0, np.pi, 2001)
    errors = []
    for n in [4, 8, 16, 32]:
        knots = np.linspace(0, np.pi, n + 1)
        bias, coefs = relu_interpolant(np.sin, knots)
        errors.append(np.abs(relu_network(xs, knots, bias, coefs) - np.sin(xs)).max())
    slope = np.polyfit(np.log([4, 8, 16, 32]), np.log(errors), 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.1)
    with pytest.raises(ValueError, match="increasing"):
        relu_interpolant(np.sin, np.array([1.0, 0.0]))


def test_make_mlp_structure():
    mlp = make_mlp([2, 16, 8, 1])
    assert sum(p.numel() for p in mlp.parameters()) == 2 * 16 + 16 + 16 * 8 + 8 + 8 + 1
    assert isinstance(mlp[1], torch.nn.ReLU) and isinstance(mlp[-1], torch.nn.Linear)
    assert mlp(torch.zeros(5, 2)).shape == (5, 1)
    with pytest.raises(ValueError):
        make_mlp([3])
