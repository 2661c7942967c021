"""Ember's model zoo: reference architectures defined in Ember's own code, exported to ONNX.

>>> from ember import zoo
>>> zoo.names()                                                    # doctest: +SKIP
['resnet-50', 'resnet-18', 'googlenet', 'mobilenet-v2', 'mobilenet-v3-small', 'bert-base', 'bert-tiny']
>>> path = zoo.export_onnx("googlenet")                            # doctest: +SKIP
>>> feeds = zoo.sample_inputs("googlenet", batch=1)                # doctest: +SKIP

Weights are random but deterministic (``seed``), with BatchNorm statistics calibrated so they are
far from the identity. The real all-MiniLM-L6-v2 sentence-embedding model lives in
``ember.zoo.minilm``.
"""
from ember.zoo.export import cache_dir, export_module, export_onnx
from ember.zoo.registry import InputSpec, ZooModel, build_model, get, names, sample_inputs

__all__ = ["InputSpec", "ZooModel", "build_model", "cache_dir", "export_module", "export_onnx", "get",
           "names", "sample_inputs"]
