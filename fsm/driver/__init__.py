"""The trio driver: carries out the core's effects over trio-websocket.

It owns the nursery, the sockets, the timers and the heartbeat, and turns every way an
attempt or a connection ends into exactly one lifecycle event. It depends on the core
and on the adapters' interface (:mod:`fsm.adapters`), never on a server.

The public paths are :mod:`fsm.connector` and :mod:`fsm.aio` (and ``fsm`` itself).
"""
