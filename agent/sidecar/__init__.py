"""The sidecar: the long-running agent that drives the flow (discover, read meters,
attribute, price, store) on a schedule, and its other ways in, from recorded traces
(record, replay, trace checks) and the demo. Grouped because these are the drivers,
not steps: each calls the steps and owns none of their rules."""
