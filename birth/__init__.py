"""Models: the TransformerLens model builder and the associative memories."""

__version__ = "0.1.0"
