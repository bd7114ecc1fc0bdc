"""The `flask` commands, one module per noun of the domain."""
