"""Capacity of linear and non-linear associative memories (family "capacity"; `birth capacity`), one
module per experiment: capacity (recall against the number of stored associations and n*(d) of the
fixed constructions of birth/memories/hopfield.py)."""
