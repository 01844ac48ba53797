"""Live migration between two labs, Ganeti's way, with a journal in each and crash recovery.

:mod:`.transfer` runs one migration (after :mod:`.prepare`'s refusals), writing a
:mod:`.journal` in both labs; :mod:`.recovery` resolves a journal a killed kvmlab left; both
end with one of the :mod:`.endings`, driving the two QEMUs through :mod:`.endpoints`.
"""
