"""The puzzles a user gives solve.py: reading them (text, CSV, an ARC task id), printing answers, checking them."""
