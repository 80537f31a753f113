"""The engine at run time: the clock, one worker per scale set, the fleet adapter protocol.

Workers are where side effects happen; they record intent and result as events.
"""
