"""normserve's HTTP service: the Open Inference Protocol (KServe v2) with dynamic batching."""

from .. import __version__

__all__ = ["__version__"]
