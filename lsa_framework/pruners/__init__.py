"""pruners."""
