"""The read side: projections folded from the event log (see issue "projections/")."""
