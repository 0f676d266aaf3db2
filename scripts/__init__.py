"""Command-line entry points (`birth ...`) and figure scripts."""
