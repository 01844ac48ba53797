"""Snapshots and saved states: a running VM's machine state written to a file, and loaded again.

A machine state is only valid for the runtime it was taken from, so the two travel together:
:mod:`.record` keeps the state file's size, digest and runtime beside it; :mod:`.write` takes
one (``snapshot``, ``save``) and :mod:`.load` runs one (``revert``, ``restore``), after
:mod:`.plan`'s refusals; :mod:`.operations` strings the steps together under a :mod:`.journal`
that :mod:`.recovery` resolves when a kvmlab was killed in between (docs/snapshots.md).
"""
