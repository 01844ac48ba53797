"""Regression checks for command lines: golden files per QEMU profile and a semantic diff.

:mod:`~kvmlab.golden.cases` renders every case of ``fixtures/cases`` for every recorded QEMU
profile and compares it with ``fixtures/golden``; :mod:`~kvmlab.golden.fileformat` is the
``.args``/``.error`` file format; :mod:`~kvmlab.golden.diff` says what changed between two
runtimes, option by option, and whether the guest can see it (the migration uses it to refuse a
target that would change the guest). Pure apart from reading the files it compares.
"""
