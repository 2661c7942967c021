"""Caffe layer handlers, one module per layer family, imported from this explicit list."""
from ember.frontends.caffe.layers import activation, conv, linear, norm, pool, tensor  # noqa: F401
