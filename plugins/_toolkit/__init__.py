"""The probes' private toolkit: what more than one built-in probe shares and the SDK does not offer.

``verdict`` (the one judge of an HTTP response's status), ``steps`` (HTTP steps run in order: a
``flow``, a ``webhook``'s trigger), ``auth`` (credentials and OAuth tokens),
``headers`` (rate-limit and lifecycle headers), ``inbound`` and ``signatures`` (push endpoints),
``openapi`` and ``schema`` (response shapes), ``tls`` (certificate metrics), ``net`` (targets,
resolution and the failure map), ``sockets`` (a local address to send from, the first address that
answers). Private to ``plugins/``: third-party probes use ``agent.sdk``.
"""
