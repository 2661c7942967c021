"""ONNX op handlers, one module per op family; imported from this explicit list."""
from ember.frontends.onnx.handlers import (  # noqa: F401
    activation, constant, control, conv, elementwise, linalg, norm, pool, reduce, resize, shape,
)
from ember.frontends.onnx.handlers import composite, extra, recurrent  # noqa: F401  (after reduce: extra reuses its factories)
