"""Small shared helpers (atomic file writes, CPU core counts, ...)."""
