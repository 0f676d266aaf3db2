"""Associative memories: storage schemes, capacity constructions, gradient dynamics."""
