"""Base layer: files, seeds, validation, devices and config loading. Imports nothing else of the project."""
