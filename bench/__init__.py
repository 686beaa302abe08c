"""Benchmarks of normserve against its peers: tools, not part of the product.

``normserve bench`` (``bench.kernels``, and ``bench.cuda`` for the GPU) times the kernels against
NumPy, PyTorch and ONNX Runtime; ``python -m normserve.bench.load`` drives the service and its
peers (Triton, MLServer, KServe) with concurrent clients; ``bench.app`` times the inference app
in-process. No product module imports this package: the ``bench`` extra brings what it needs.
"""
