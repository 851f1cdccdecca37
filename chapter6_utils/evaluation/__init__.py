"""Measuring attribution methods: sanity checks, faithfulness, ground truth (chapter 6,
"All Four Methods, Side by Side" and "The False Confidence Problem").

The chapter's Table 1 states which methods pass the sanity check and conserve relevance;
this module measures it, on models whose shortcut is known.

* :data:`METHODS`, :func:`get_method`, :func:`method_maps`: a registry, so that every
  evaluation loops over methods the same way. A :class:`Method` turns its function's output
  into a 2-D map (N, H, W) and knows how to read it as evidence (:meth:`Method.evidence`).
* :func:`model_randomization` (equation 15 (book/equations.md), Adebayo et al., 2018): the map after each
  layer is re-initialised, from the output down, and its similarity to the trained map
  (:func:`spearman`, :func:`ssim`). :func:`randomization_sweep` does every method at once.
* :func:`data_randomization`: the same comparison against a model trained on shuffled labels.
* :func:`deletion_curve`, :func:`insertion_curve` (equation 14 (book/equations.md); Samek et al., 2017;
  Petsiuk et al., 2018): the class probability as pixels are removed or inserted in the
  order the map ranks them.
* :func:`relevance_mass`, :func:`relevance_rank_accuracy`, :func:`pointing_game`
  (Arras et al., 2022; Zhang et al., 2018): maps against the lesion and ruler masks.
* :func:`agreement`: rank correlation between the maps of different methods.
* Controls (:data:`CONTROLS`: :func:`edge_map`, :func:`constant_map`, :func:`noise_map`):
  maps that ignore the model, run through every test as reference rows;
  :func:`bootstrap` (a mean over images x seeds with a 95% interval) and :func:`verdict`
  (pass, fail or inconclusive from the interval and a stated threshold).
* :func:`sanity_checks` (:data:`TESTS`): cascading top-down and bottom-up, independent
  layer, eMPRT, sMPRT and data randomisation, with intervals and verdicts, randomised
  copies shared across methods.
* :func:`evaluate`, :func:`table1`: the chapter's Table 1 beside the measured one, every
  verdict from a rule in code (:data:`RULES`) with its interval.
* :func:`ruler_effect` (the ruler's true effect by intervention, per image) and
  :func:`meta_evaluation` (Kendall tau of each metric's order of the methods with it).
* :func:`randomization_grid`, :func:`similarity_curves`, :func:`curves_figure`,
  :func:`agreement_figure`: the figures of notebook 07.

Functions take a model, a normalised batch ``x`` (N, C, H, W) and targets as the methods
do, and leave the model as they found it. Maps are (N, H, W).
"""
from .faithfulness import (Curve, deletion_curve, insertion_curve, pointing_game, random_map,
                           relevance_mass, relevance_rank_accuracy)
from .controls import (MIN_IMAGES, MIN_SEEDS, VERDICTS, Estimate, bootstrap, constant_map, edge_map, noise_map,
                       verdict)
from .figures import (agreement_figure, curves_figure, faithfulness_bands, random_weight_figure, randomization_grid,
                      similarity_bands, similarity_curves)
from .randomization import (RandomizationResult, data_randomization, model_randomization,
                            randomization_layers, randomization_sweep, randomized_models)
from .registry import (CONTROLS, GRADIENT_BASED, METHODS, Method, available_methods, conservation_error,
                       get_method, is_vit, method_maps, relative_cost)
from .sanity import TESTS, SanityReport, Test, map_entropy, sanity_checks
from .intervention import MetaEvaluation, RulerEffect, kendall_tau, meta_evaluation, ruler_effect
from .table import CHAPTER_TABLE, MEASURES, RULES, Evaluation, Table1, evaluate, table1
from .similarity import Agreement, agreement, centred_ranks, spearman, spearman_to, ssim

__all__ = ["Method", "METHODS", "get_method", "available_methods", "method_maps", "is_vit",
           "randomization_layers", "randomized_models", "model_randomization", "randomization_sweep",
           "RandomizationResult", "data_randomization", "spearman", "ssim", "deletion_curve",
           "insertion_curve", "Curve", "random_map", "relevance_mass", "relevance_rank_accuracy",
           "pointing_game", "agreement", "Agreement", "conservation_error", "relative_cost",
           "randomization_grid", "similarity_curves", "curves_figure", "agreement_figure",
           "CONTROLS", "GRADIENT_BASED", "edge_map", "constant_map", "noise_map", "Estimate", "bootstrap", "verdict",
           "MIN_IMAGES", "MIN_SEEDS", "VERDICTS", "TESTS", "Test", "SanityReport", "sanity_checks", "map_entropy",
           "similarity_bands", "faithfulness_bands", "random_weight_figure", "CHAPTER_TABLE", "MEASURES", "RULES",
           "Evaluation", "Table1", "evaluate", "table1", "centred_ranks", "spearman_to",
           "RulerEffect", "ruler_effect", "MetaEvaluation", "meta_evaluation", "kendall_tau"]
