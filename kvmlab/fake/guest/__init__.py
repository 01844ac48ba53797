"""The simulated guest: what runs inside a fake VM, apart from the machine around it.

:mod:`~kvmlab.fake.guest.boot` is the guest's boot (the guest facts on ttyS0) and
its answers to the power button and reset; :mod:`~kvmlab.fake.guest.cmdchannel`
is the command channel on the second ``-serial`` (ttyS1), whose requests
:mod:`~kvmlab.fake.guest.shell`, a tiny ``sh``, answers from the machine's state
(loaded at the first request).

This file imports nothing, so that a VM without a command channel does not load it.
"""
