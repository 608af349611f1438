"""mechlib: the tested library behind the arithmetic-in-transformers research book."""

__version__ = "0.1.0"
