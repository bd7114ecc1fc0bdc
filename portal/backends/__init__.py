"""Backends: how the portal reaches a server org, one module per protocol."""
