"""The shared model host (``MME_MODEL_HOST=shared``): one process holding TensorFlow and every loaded model.

:mod:`handler.host.protocol` is the wire format, :mod:`handler.host.client` what MMS's thin workers use (neither
imports TensorFlow), :mod:`handler.host.server` the host process itself (``python -m handler.host``), and
:mod:`handler.host.supervisor` how ``serve`` starts and restarts it. See docs/model-host.md.
"""
