"""Attribute: the step after the meters, splitting each device reading among the
processes, models and calls that shared the device (baseline, windows, span ledger,
reading checks). Grouped because every module here turns measured joules into shares
and must agree on the exact-split rules."""
