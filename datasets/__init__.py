"""Event schema, readers, validation, sessions, vocabulary, splits and transitions (no torch)."""
