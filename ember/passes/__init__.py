"""Ember's graph optimizer: named ``Graph -> Graph`` passes in an explicit pipeline.

- ``manager``: pass registry (``@register_pass(name, phase)``), ``PassContext``, instruments
  (stats, dumps, verifier) and ``run_passes``.
- ``pipeline``: the ``PIPELINE`` list and ``run_pipeline(graph, config, ...)``.
- ``rewrite``: patterns + callbacks (``Rule``) and the engine that applies them safely.
- cleanup: ``cleanup`` (no-ops, transposes, reshapes, CSE, DCE); fold: ``fold`` (constants and
  shape arithmetic), ``fold_weights`` (BatchNorm, per-channel scale/shift into weights),
  ``quantization`` (``record_qdq``: a Q/DQ model's scales as quantization records, before
  folding; ``prune_quant_records`` runs last);
  fuse: ``fuse_conv``, ``fuse_gemm``, ``fuse_norm`` (LayerNorm, residual + LayerNorm, GELU),
  ``fuse_attention``, ``fuse_horizontal``; layout: ``concat`` (in-place concat slices),
  ``layout`` (NHWC plan); precision: ``precision``.
"""
