"""Adapters to heavy frameworks; each imports its framework inside its functions."""
