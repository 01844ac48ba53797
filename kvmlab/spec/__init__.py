"""What a VM is, before anything runs: the first stage of the pipeline.

An :class:`~kvmlab.spec.instance.Instance` (Ganeti's hvparam names and their cross-field
rules), what a QEMU binary can do (:mod:`~kvmlab.spec.capabilities`), where an instance's files
live in a state directory (:mod:`~kvmlab.spec.layout`), and the argv vocabulary every later
stage reads command lines with (:mod:`~kvmlab.spec.argv`). Nothing here starts a process or
writes a file; the modules are imported by their own path, so that this package costs nothing.
"""
