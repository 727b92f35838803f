"""Data-driven merges: Fisher merging, RegMean (and RegMean++) and AdaMerging.

Each needs data, taken from the recipe's ``evaluation:`` block (its val split): Fisher and
RegMean compute per-ingredient statistics (diagonal Fisher, Gram matrices of the linear
layers' inputs), cached in the user cache, then merge tensor by tensor; AdaMerging learns
task-vector coefficients on unlabeled inputs. The methods are registered in
:data:`mergekit_like.recipe.datamerge.DATAMERGE_METHODS`; importing this package does not
import torch. :mod:`mergekit_like.datamerge.runner` runs them.

Example recipe::

    merge_method: fisher
    models: [{model: ft-0}, {model: ft-1, parameters: {weight: 2.0}}]
    evaluation: {task: classification, data: data.npz}
    datamerge: {num_examples: 256, sample_labels: true}
"""

from __future__ import annotations

from mergekit_like.recipe.datamerge import DATAMERGE_METHODS, DataMergeMethod

__all__ = ["DATAMERGE_METHODS", "DataMergeMethod"]
