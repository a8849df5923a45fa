"""The ``stemify`` command line."""
