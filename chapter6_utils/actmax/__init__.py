"""Activation maximisation: the input that makes a unit fire most (chapter 6, "Activation Maximization").

Unlike the attribution methods, nothing here explains a given image: we *search* for an
image. An :class:`Objective` names what to maximise; :func:`maximize` climbs its gradient in
pixel space (equation 10 (book/equations.md), Erhan et al., 2009; Simonyan et al., 2013; regularisers after
Yosinski et al., 2015 and Mahendran & Vedaldi, 2015); :func:`dgn_am` climbs it in the latent
space of an image generator (equation 11 (book/equations.md), Nguyen et al., 2016).

Objectives (layers are named as in ``dict(model.named_modules())``, e.g. ``"features.8"``):

* :func:`class_logit`: the pre-softmax score ``S_c`` of class ``c``;
* :func:`channel`: the mean activation of channel ``c`` of a layer;
* :func:`unit`: one neuron, activation ``[c, y, x]`` of a layer.

They combine linearly: ``0.5 * actmax.channel("features.8", 3) + actmax.class_logit(1)``.
An objective maps a batch to one value per image, (N,).

Both searches run with the model (and generator) in eval mode and frozen, and leave them
exactly as they found them (:func:`chapter6_utils._guard.model_guard`); they compute on
the model's device. Helpers measure what the regularisers claim to change:
:func:`total_variation`, :func:`high_frequency_energy`; :func:`ruler_tick_energy` measures
ruler ticks in a lesion image; :func:`nearest_neighbour_distance` scores realism.
"""
from ..data import gaussian_blur  # re-exported: the blur regulariser of maximize
from .measures import (high_frequency_energy, nearest_neighbour_distance, pooled_features,
                       ruler_tick_energy, total_variation)
from .objectives import Objective, channel, class_logit, unit
from .search import ActMaxResult, dgn_am, maximize

__all__ = ["Objective", "class_logit", "channel", "unit", "maximize", "dgn_am", "ActMaxResult",
           "gaussian_blur", "total_variation", "high_frequency_energy", "ruler_tick_energy",
           "nearest_neighbour_distance", "pooled_features"]
