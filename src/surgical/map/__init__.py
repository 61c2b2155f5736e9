"""The map stage."""
