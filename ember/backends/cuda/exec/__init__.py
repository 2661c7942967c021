"""Running a whole CUDA plan: the static ``schedule`` (host or device per layer, ``streams``,
lifetimes), the ``program`` built once per engine (``CudaProgram``: kernels in order, one eager
forward), and each execution context's ``executor`` (``CudaExecutor``): a CUDA graph per input
shape (``graphs``), every intermediate in its planned place in the context's device ``arena``.

>>> from ember.backends.cuda.exec.streams import assign_streams
>>> assign_streams([[], [0], [0]]).stream
[0, 0, 1]
"""
