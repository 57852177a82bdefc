"""COMPRESS: the passes.

The table of passes is :data:`ci_compress.passes.registry.PASSES`; the contract every
pass follows is in :mod:`ci_compress.passes.base`; one module per pass.
"""
