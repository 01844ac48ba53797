"""Tools for testing with kvmlab: hypothesis strategies and a pytest plugin.

``kvmlab.testing.strategies`` draws valid instances, capability profiles, layouts
and start-time facts, for kvmlab's own properties and for users' suites::

    from hypothesis import given
    from kvmlab.testing import strategies as kst

    @given(kst.instances(), kst.capabilities())
    def test_my_driver(instance, caps): ...

The pytest plugin (``kvmlab.testing.plugin``) is registered as an entry point
and adds lab fixtures; importing it has no side effects.
"""
