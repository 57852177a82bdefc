"""PACK: the shipped file and what it is made of.

* :mod:`~ci_compress.packing.file`: the ``.ccz`` container (streamed writing, bounded and
  strict reading, size breakdown);
* :mod:`~ci_compress.packing.encoding`: tensor encodings of format 3 (sparse masks or
  gaps, integer/palette/raw values, rANS or zstd-coded symbol streams, chosen from
  histograms);
* :mod:`~ci_compress.packing.legacy`: reading files of formats 1 and 2;
* :mod:`~ci_compress.packing.codecs`: how each layer type is described and rebuilt
  (derived from :mod:`ci_compress.layers`);
* :mod:`~ci_compress.packing.program`: the graph a model of custom classes ships with (a
  ``torch.export`` program without weights), checked before torch reads it;
* :mod:`~ci_compress.packing.export`: TorchScript, ONNX and ``.pt2`` exports, checked on
  the holdout;
* :mod:`~ci_compress.packing.runtimes`: the student converted to its serving runtime
  (``ship.runtime``: ONNX Runtime or OpenVINO, optionally int8 by that runtime's own
  post-training quantization) and loaded back as a module.
"""
