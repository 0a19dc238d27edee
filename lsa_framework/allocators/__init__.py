"""allocators."""
