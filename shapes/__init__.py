"""The pure shape core: definitions, where clauses, offsets, routing and log messages.

Nothing here does I/O; ``syncd`` builds the daemon on top of it.
"""

from shapes.compiled import install_guard

install_guard()
