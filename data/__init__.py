"""Shipped corpora, task prompts and their generators (see data/README.md)."""
