"""The orchestrator: domain, deciders, workers, fleet adapters and the HTTP API.

Built on the event log in ``events``; see the issues "engine/" and "engine/ HTTP API".
"""
