"""Ember's error types.

Every error a user can trigger is an ``EmberError`` whose message names the thing at fault
(file, node, input, opset, shape) and says what to do. Tools catch ``EmberError`` and print the
message alone; anything else escaping is a bug in Ember.
"""
from __future__ import annotations


class EmberError(Exception):
    """Base class of all errors Ember raises on purpose."""


class ModelLoadError(EmberError):
    """A model file could not be read or parsed."""


class UnsupportedOpError(EmberError):
    """The model uses operators Ember cannot import; lists every one of them."""


class GraphError(EmberError):
    """The graph is malformed (verifier failure, impossible shapes)."""


class ShapeError(GraphError):
    """Shapes cannot be inferred or are inconsistent."""


class BuildError(EmberError):
    """The builder could not produce an engine for this model and configuration."""


class EngineFileError(EmberError):
    """An engine file is truncated, altered, of a newer format, or for another device."""


class InputError(EmberError):
    """An input given to ``ExecutionContext.infer`` is missing, unknown, or of the wrong kind."""


class IndexRangeError(InputError, GraphError):
    """An index input held a value out of range (a Gather index past the table, say): the values
    given to the engine are at fault, so it is an ``InputError`` (a client's error to ``ember
    serve``) as well as the ``GraphError`` of the node that read it."""


class DeviceError(EmberError):
    """The requested device is not available on this machine."""
