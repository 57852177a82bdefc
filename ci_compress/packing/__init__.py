"""PACK: the shipped file and what it is made of.

* :mod:`~ci_compress.packing.file`: the ``.ccz`` container (write, read back, bounded
  reading, size breakdown);
* :mod:`~ci_compress.packing.encoding`: tensor encodings (bit-packing, palettes, sparse
  streams, canonical Huffman) and the zstd payload;
* :mod:`~ci_compress.packing.codecs`: how each layer type is described and rebuilt
  (derived from :mod:`ci_compress.layers`);
* :mod:`~ci_compress.packing.export`: TorchScript and ONNX exports, checked on the holdout.
"""
