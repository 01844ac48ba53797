"""The command line: QEMU's options in, a :class:`~kvmlab.fake.cmdline.config.Config` out.

:mod:`~kvmlab.fake.cmdline.parser` walks the options (``parse_argv``) and hands
each family to its handlers: :mod:`~kvmlab.fake.cmdline.chardev` (``-chardev``,
``-serial``, ``-monitor``, ``-qmp``, ``-mon``), :mod:`~kvmlab.fake.cmdline.net`
(``-netdev``, ``-net``, ``-nic``, ``-device``) and :mod:`~kvmlab.fake.cmdline.disk`
(``-device virtio-blk-pci``), which share a
:class:`~kvmlab.fake.cmdline.parse_state.ParseState`. Below them are the option
syntax (:mod:`~kvmlab.fake.cmdline.qemuopts`), the device model names and PCI slot
rules (:mod:`~kvmlab.fake.cmdline.pci`, which QMP ``device_add`` reuses) and the
result as data (:mod:`~kvmlab.fake.cmdline.config`, read by every later stage).

This file imports nothing, so that a module importing only ``config`` or
``qemuopts`` does not load the parser.
"""
