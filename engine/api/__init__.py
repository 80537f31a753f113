"""The ARM-compatible HTTP API: Azure's own SDK (azure-mgmt-compute) drives osupgrade.

``server.ApiServer`` runs uvicorn with the engine, its workers and the projection in one
process; ``app.build_app`` is the Starlette application; the other modules each hold one
idea (errors, auth, parsing, rendering, long-running operations).
"""
