"""QMP hotplug: the devices a running fake VM gains and loses.

:mod:`~kvmlab.fake.hotplug.devices` answers ``netdev_add``, ``netdev_del``,
``device_add`` and ``device_del``, handing a disk driver to
:mod:`~kvmlab.fake.hotplug.disk` (``blockdev-add``, ``blockdev-del``,
``query-named-block-nodes``); :mod:`~kvmlab.fake.hotplug.fds` keeps the
descriptors ``getfd`` names for a tap ``netdev_add fd=``. The device tables and
slot rules are the command line's (:mod:`kvmlab.fake.cmdline`). The QMP command
table imports each module on the first command that needs it, so a VM nobody
hotplugs never loads this package.

This file imports nothing, so that loading one of them does not load the others.
"""
