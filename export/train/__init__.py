"""The recipe behind the shipped default model (``feredge train``)."""
