"""The layer types passes produce, and what every stage needs to know about layers.

A leaf: imports nothing of ours beyond :mod:`ci_compress.errors`. The passes build these
layers, the packed format stores and rebuilds them (its codecs derive from
:data:`ci_compress.layers.modules.CLASSES`), evaluation counts their weights.

* :mod:`~ci_compress.layers.modules`: the compressed layer classes (imports torch);
* :mod:`~ci_compress.layers.int8`: int8 weight quantization and torch's fast dynamic
  int8 Linear;
* :mod:`~ci_compress.layers.inspect`: the learned tensors of any model, for counting.
"""
