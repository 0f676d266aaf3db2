"""`birth` subcommands: thin front ends over the library (one module each, imported when run)."""
