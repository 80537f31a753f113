"""The ``osupgrade`` command line: the demo, the read commands, ``simulate`` and ``audit``.

Kept apart from the runtime so that the engine can be embedded without pulling in argument parsing.
"""
