"""Stage 3, execution and writing: run a plan tensor by tensor into a staged output folder.

``write`` is the entry point (:func:`~mergekit_like.execute.write.write_model`): it lays out
the shards, runs the ``executor`` over the plan's ``steps`` (with the ``pipeline`` overlapping
I/O, ``host``/``gpu`` the two places a step runs), records each tensor in the resume
``journal``, and publishes the folder (``staging``, ``output``, ``model_card``). ``global_trim``
is the model-wide trim's pre-pass; ``distributed`` splits the shards across processes.
"""
