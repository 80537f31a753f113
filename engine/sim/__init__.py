"""The simulated fleet and what drives it: scenario files, the simulation run, its report.

A fleet adapter like any other, so the engine cannot tell it from a real one.
"""
