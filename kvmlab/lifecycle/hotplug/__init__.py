"""Hotplug of NICs and disks into a running VM over QMP, the saved runtime rewritten to match."""
