"""Backbone loading (presets, hub ids, local dirs) and the scorers that turn a forward into class logits."""
from backbones.loading import (PRECISIONS, PRESETS, QUANTS, Backbone, BackboneConfig, BackboneError,
                               list_models, load_backbone)
from backbones.scoring import NORMALIZATIONS, SCORING_MODES, EncodedBatch, Scorer

__all__ = ["PRECISIONS", "PRESETS", "QUANTS", "Backbone", "BackboneConfig", "BackboneError", "list_models",
           "load_backbone", "NORMALIZATIONS", "SCORING_MODES", "EncodedBatch", "Scorer"]
