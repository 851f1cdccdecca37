"""Concepts: which channels carry a class's relevance (chapter 6, "What do neurons respond to").

* :func:`concept_relevance` (conditional LRP, the input relevance that flows through
  chosen channels) and :func:`channel_relevance` (each channel's share): :mod:`.core`.
* The shortcut hunt: :func:`rank_channels` and :func:`contrast_channels` (no masks), then
  :func:`mask_share` (scored with masks), :func:`ablate_channels`, :func:`intervene` and
  :func:`intervene_sweep` (zeroed, or set to :func:`mean_activation`, on a copy): :mod:`.hunt`.
* Reference images of a channel, by activation (ActMax) or relevance (RelMax), cropped
  to the receptive field: :func:`reference_images`: :mod:`.reference`.
* The data-set view: :func:`spray` (spectral relevance analysis, clusters of LRP maps)
  and :func:`purity`: :mod:`.clusters`.
"""
from .core import channel_relevance, concept_relevance
from .hunt import (ChannelRanking, Intervention, ablate_channels, contrast_channels, intervene, intervene_sweep,
                   mask_share, mean_activation, rank_channels)
from .reference import ReferenceImages, reference_images
from .clusters import Spray, purity, spray

__all__ = ["concept_relevance", "channel_relevance", "ChannelRanking", "rank_channels", "contrast_channels",
           "mask_share", "mean_activation", "ablate_channels", "Intervention", "intervene",
           "intervene_sweep", "Spray", "spray", "purity",
           "ReferenceImages", "reference_images"]
