"""Bindings of the libraries the CUDA kernels call beyond PyTorch's own operators.

- ``cudnn_graph``: cuDNN operation graphs (fused conv epilogues, attention) through NVIDIA's
  cuDNN frontend (the optional ``nvidia-cudnn-frontend`` package), with a persistent plan cache;
- ``triton_ops``: Ember's Triton kernels as plain tensor functions (bias + activation epilogue,
  LayerNorm, softmax, NHWC max pooling, LRN); ``triton_conv``: the implicit-GEMM convolution
  that writes through any output strides; ``triton_elementwise``: generated kernels for fused
  elementwise chains; ``triton_jit``: the ``@triton.jit`` functions behind them.

Every module here imports without the library (and without a GPU): the library is imported when
a kernel is first built or launched, and ``available()`` / ``ember.backends.cuda.device``'s
``triton_available()`` tell the registry whether the tactics that need it apply. The layer
kernels that use these bindings are in ``ember.backends.cuda.kernels``.
"""
