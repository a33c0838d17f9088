"""Dask workers behind firewalls: the ``relay://`` comm backend (:mod:`backends.relay.comm`),
its link protocol (:mod:`backends.relay.mux`) and the broker (:mod:`backends.relay.broker`,
``python -m backends.relay``). Nothing is imported here, so that the broker process loads only
what it runs (not distributed)."""
