"""Plugins' CUDA kernels: attaches the CUDA kernel registry to ``ember.backends.plugins``, so every
``@ember.kernel(device="cuda"|"any")`` of a plugin, declared before or after, is a CUDA tactic of
its Plugin nodes (``needs_triton`` kernels where Triton can run). The attachment is made from
here, the CUDA side, so that the plugin module, which the CPU kernels import, never imports the
CUDA backend."""
from ember.backends import plugins
from ember.backends.cuda.device import triton_available
from ember.backends.cuda.registry import CUDA_KERNELS

plugins.attach_registry("cuda", CUDA_KERNELS, triton_available)
