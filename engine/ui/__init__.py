"""The time-travel dashboard: a read-only web view of the log at any of its positions."""
