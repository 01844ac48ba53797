"""The monitors: what a client of the fake VM talks to over its sockets.

:mod:`~kvmlab.fake.monitor.qmp` speaks QMP (greeting, framing, QEMU's request
checks, replies, events) and looks each command up in
:mod:`~kvmlab.fake.monitor.qmp_commands`, one row per command;
:mod:`~kvmlab.fake.monitor.hmp` is the human monitor, whose commands QMP's
``human-monitor-command`` shares. Handlers that belong to a feature (hotplug,
migration) live in that feature's package and are imported on first use.

This file imports nothing, so that loading one monitor does not load the other.
"""
