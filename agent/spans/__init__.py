"""Spans: the in-process half of the flow, from the SDK and context the instrumented
application uses, through the emitter and wire format, to the receiver in the agent
that hands spans to the ledger. Kept together because both ends must agree on the wire
format and the application must never block on us."""
