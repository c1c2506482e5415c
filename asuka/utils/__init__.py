"""Floor 0: helpers every other floor may use (errors, safe weight loading, CLI glue)."""
