"""The pure shape core: definitions, where clauses, offsets, routing and log messages.

Nothing here does I/O except the shape client (:mod:`shapes.client`) and, once at import, the
guard that checks the compiled modules against their sources (:mod:`shapes.compiled`).
``syncd`` builds the daemon on top of it.
"""

from shapes.compiled import install_guard

install_guard()
