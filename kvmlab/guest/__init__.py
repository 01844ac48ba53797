"""The test guest: a Debian kernel and a busybox initramfs that boot in seconds under TCG.

It prints the guest facts (``KVMLAB-BOOT-OK``, memory, CPUs, NICs) on its serial console and
answers commands on a second serial port, so that the same assertions hold on real QEMU and on
the fake kvm. Built from Debian packages in Python (no root, no host tools beyond apt), cached.
"""
