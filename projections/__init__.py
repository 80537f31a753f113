"""The read side: projections folded from the event log.

So far: ``upgrade_view`` (one upgrade in Azure's shapes) and ``fleet_view`` (latest
upgrade, the five-attempt history and instance images per scale set, folded from any
store up to any position or engine time). Stored, checkpointed projections, rebuild and
the audit commands are the open part of the "projections/" issue.
"""
