"""The HTTP transport: FastAPI routes (v2 and normserve's v1), the raw-ASGI inference fast
path, body reading, the JSON/binary wire format, responses, connections under deadlines, and
the one mapping of the core's errors to JSON error bodies."""
