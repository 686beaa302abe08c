"""normserve's HTTP service: the Open Inference Protocol (KServe v2) with dynamic batching."""

__version__ = "0.1.0"
