"""Protocol adapters: how "ready", "flush", "edit" and "ack" look on the wire.

``_base``: the hooks an adapter implements (:class:`~fsm.KernelProtocol`), the small
interface of the link it is handed (:class:`~fsm.protocols.AdapterLink`), verdicts and
URL helpers; ``_reference``: the reference kernel protocol (DESIGN.md section 6);
``_marimo`` (and ``_marimo_notebook``): a real marimo server (section 7). Adapters
depend on the core and on that link interface only, never on the driver's modules.

The public paths are :mod:`fsm.protocols` and :mod:`fsm.marimo`.
"""
