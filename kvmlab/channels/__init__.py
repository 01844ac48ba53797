"""Talking to a running VM: its QMP monitor, its serial console, the guest's command channel.

Each module owns one kind of socket in the instance's ``ctrl/`` directory and nothing else; the
lifecycle decides when to use which.
"""
