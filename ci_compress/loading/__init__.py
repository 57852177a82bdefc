"""LOAD: the teacher and the data sets, from wherever they are, checked before use.

* :mod:`~ci_compress.loading.models`: model files (TorchScript, state_dict, safetensors,
  packed ``.ccz``, pickle only on opt-in) and where they come from (path, URL, MLflow);
* :mod:`~ci_compress.loading.download`: the sha256-pinned, size-capped HTTPS download;
* :mod:`~ci_compress.loading.data`: holdout, training and calibration sets.
"""
