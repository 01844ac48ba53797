"""Side effects on this host, one resource per module: where the pure runtime meets the OS.

:mod:`~kvmlab.host.executor` runs a saved runtime (temp up-scripts, the binary, the pidfile)
and :mod:`~kvmlab.host.stopping` stops it (the power button, then signals);
:mod:`~kvmlab.host.backends` picks real QEMU or the fake kvm;
:mod:`~kvmlab.host.accel` finds out whether KVM works here; :mod:`~kvmlab.host.store` writes
state files atomically under a lock; :mod:`~kvmlab.host.inventory` reads a state directory fast
(no pydantic, for ``kvmlab list``); :mod:`~kvmlab.host.tap` opens tap devices;
:mod:`~kvmlab.host.process` knows pidfiles, liveness and deadlines. Modules are imported by
their own path: ``kvmlab list`` must not pay for the executor's imports.
"""
