"""Recommender plugins: one module per rule (batch size, idle, placement, power cap,
quantize, rightsize), each reading only the statistics infermeter.recommend builds.
Kept one per module so a new recommender is a new file and an entry point; what the
rules share (options, the pass over the records, pricing the advice) is in _rule."""
