"""Deconvnet and guided backpropagation (chapter 6, "Deconvnet and Guided Backpropagation").

Two roads from a deep signal back to the pixels:

* The *rule* road: an ordinary backward pass in which every ``nn.ReLU`` passes the
  incoming signal by one of the three rules of equation 3 (book/equations.md) (:func:`relu_backward`,
  applied to a model by :func:`relu_rule`). :func:`deconvnet` and
  :func:`guided_backprop` are ``method(model, x, target)`` attribution methods built on it,
  (N, C, H, W) like ``x``. Max-pooling and convolutions keep their usual backward, which
  already is what Zeiler and Fergus describe: the signal goes to the recorded argmax
  ("switches"), and the backward of a convolution is the transposed convolution with the
  forward weights.
* The *reconstruction* road: :func:`project` runs Zeiler & Fergus's deconvnet explicitly,
  layer by layer (unpool with the switches, ReLU, transposed convolution), from the
  strongest activations of one feature channel down to the pixels; :func:`top_activations`
  finds the image patches that excite a feature most, with their projections.

For one activation the two roads meet: ``project`` of activation ``A`` equals ``A`` times
the gradient of ``A`` under the deconvnet rule (tested). Papers: Zeiler & Fergus (2014),
"Visualizing and understanding convolutional networks"; Springenberg, Dosovitskiy, Brox &
Riedmiller (2015), "Striving for simplicity: the all convolutional net".

Every function leaves the model as it found it (:func:`chapter6_utils._guard.model_guard`),
also when it raises, and computes on x's device.
"""
from .projection import TopActivations, project, receptive_field, top_activations
from .rules import RULES, deconvnet, guided_backprop, relu_backward, relu_rule

__all__ = ["RULES", "relu_backward", "relu_rule", "deconvnet", "guided_backprop", "project",
           "top_activations", "TopActivations", "receptive_field"]
