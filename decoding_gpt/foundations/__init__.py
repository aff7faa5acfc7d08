"""Before the transformer: the code of lectures 02-04.

* :mod:`~decoding_gpt.foundations.neurons` -- the leaky integrate-and-fire neuron, the
  perceptron, why stacked affine maps collapse, ReLU networks as interpolants (02);
* :mod:`~decoding_gpt.foundations.backprop` -- a NumPy MLP with its backward pass written
  out by hand and checked against autograd (03);
* :mod:`~decoding_gpt.foundations.micrograd` -- a scalar reverse-mode autodiff engine
  (``Value``) and the same MLP built from it (03);
* :mod:`~decoding_gpt.foundations.convnets` -- convolution arithmetic, a small CNN and an
  RNN on offline data (04).

Nothing else in the package builds on these: they are course material, read in the
lectures and exercised by their checks.
"""
