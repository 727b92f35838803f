"""mergekit_like: merge the weights of fine-tuned models from a YAML recipe.

The pipeline flows one way: recipe (:mod:`.loader`, :mod:`.recipe`) -> plan (:mod:`.plan`)
-> execute (:mod:`.execute`) -> write (:mod:`.io.writer`, :mod:`.output`).
:func:`mergekit_like.run.run_merge` runs all of it.
"""

__version__ = "0.1.0"
