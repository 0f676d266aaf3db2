"""Registered experiments: one module per family (see `registry`)."""
