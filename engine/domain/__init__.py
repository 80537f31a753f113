"""The orchestrator's domain: value types, events, folds and pure deciders (no I/O)."""
