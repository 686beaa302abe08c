"""Dynamic batching: per model, a queue and its loop, the adaptive wait for callers coming
back, and the compute of a joined batch."""
