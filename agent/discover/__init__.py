"""Discover: the first step of the flow, finding which processes on this host run
inference and what to call them (target, tenant, model), with anything secret in
their command lines redacted before it goes further. Kept apart from metering so
that naming a process never depends on how its energy is read."""
