"""Live migration between two labs, Ganeti's way, with a journal in each and crash recovery."""
