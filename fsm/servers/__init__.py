"""The servers: the reference kernel server and the lazy gateway.

``_http``: reading one HTTP request head and writing responses with h11, shared by both
(each reads the head itself to route, authenticate, refuse or inject a fault before
trio-websocket's handshake); ``reference``: the reference kernel server, with fault
injection, which must never share code paths with the client it tests; ``gateway``:
one lifecycle per client session, each holding a lazy upstream connector (it is built
on the driver).

The public paths are :mod:`fsm.server` and :mod:`fsm.gateway`.
"""
