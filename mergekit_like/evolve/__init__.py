"""Evolutionary merge search (``merge evolve``): CMA-ES over a recipe's weights and
densities, per layer group, each candidate scored by an ``evaluation:`` block, serially or
on Ray. :mod:`mergekit_like.evolve.runner` runs it; :mod:`mergekit_like.evolve.config`
holds the config (torch-free)."""
