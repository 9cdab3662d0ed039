"""The Burn web app: accounts, sessions and the validated write API over the app's tables.

Layer: ``web`` (may import ``shapes`` and ``syncd``; nothing imports it). The schema lives in
``sql/`` as numbered migrations applied by ``python -m web migrate``; ``python -m web serve`` runs
the HTTP app (``web.app.create_app``).
"""
