"""Stage 2, the plan: every output tensor and how to compute it, from the headers alone.

``build`` turns a loaded recipe into a frozen :class:`~mergekit_like.plan.build.Plan`;
``sources`` expands slices and modules into per-layer sources, ``layers`` recognises layer
stacks, ``vocab`` plans the output vocabulary, ``output_spec`` the config and tokenizer files,
``architectures`` checks that ingredients fit together, ``trims`` the model-wide trims' plan-time
rules, and ``preflight`` plans hub models from their remote headers before downloading them.
"""
