"""The protocol-neutral core: the data plane both transports call, its named errors, the
decoded call it runs, tensor limits and checks, metrics, the admin token. It imports nothing
of a transport (``tests/service/core/test_core_imports.py`` checks)."""
