"""Report: a consumer of the store, querying what was stored and rendering it as the
report and the live top view. Grouped so that every reader of stored costs shares one
query layer."""
