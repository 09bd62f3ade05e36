"""The ``producer`` command line: a thin layer over the ``framestats`` Python API."""
