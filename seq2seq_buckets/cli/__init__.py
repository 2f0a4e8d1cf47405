"""Thin command-line entry points: they parse flags and call the library."""
