"""Clip generators: a small protocol, the built-in procedural renderer, adapters for real services."""
