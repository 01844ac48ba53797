"""Live migration between two fake VMs, loaded only by a VM that migrates.

:mod:`~kvmlab.fake.migration.outgoing` is the source side (``migrate``,
``migrate_cancel``, ``query-migrate`` and the transfer);
:mod:`~kvmlab.fake.migration.incoming` the target side (``-incoming``,
``migrate-incoming``). Both use :mod:`~kvmlab.fake.migration.state` (what moves,
what must match, the URIs) and :mod:`~kvmlab.fake.migration.params` (capabilities
and parameters, QEMU 7.2's and 10.0's).

This file imports nothing, so that a migration target does not load the source side.
"""
