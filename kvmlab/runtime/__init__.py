"""The pure middle of the pipeline: instance + capabilities in, runtime and command out.

:mod:`~kvmlab.runtime.generator` turns an instance into a frozen
:class:`~kvmlab.runtime.saved.KVMRuntime` (the saved argv plus the NICs kept as data),
:mod:`~kvmlab.runtime.saved` is its versioned JSON format (Ganeti's legacy lists upgraded),
:mod:`~kvmlab.runtime.plan` completes a copy of the argv with what only exists at start time,
:mod:`~kvmlab.runtime.rebase` moves a runtime into another lab for a migration, and
:mod:`~kvmlab.runtime.invariants` checks the promises the rest of kvmlab relies on. No files,
processes, clock or randomness: everything with side effects lives in :mod:`kvmlab.host`.
"""
