"""Triton's protocol extensions, protocol-neutral: model configuration, statistics, logging
settings and system shared memory."""
