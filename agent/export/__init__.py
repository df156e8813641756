"""Export: a consumer of the store, writing its costs for other systems (FOCUS
files, chargeback views). Kept apart so a new output format touches nothing that
measures or stores."""
