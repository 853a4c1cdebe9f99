"""``python -m handler.host``: run the shared model host (see :mod:`handler.host.server`)."""

from handler.host.server import main

main()
