"""The fault suite: real faults (database restarts, a full store, races, hostile clients)."""
