"""Running instances: the :class:`~kvmlab.lifecycle.hypervisor.Hypervisor` and the changes it
makes to a running VM (:mod:`~kvmlab.lifecycle.hotplug`, :mod:`~kvmlab.lifecycle.migration`).

Every change keeps the saved runtime true to the running VM, so that a soft reboot never undoes
or half-applies anything.
"""
