"""Compute backends for the transformer: ``cpu`` (NumPy, the reference) and ``cuda`` (CuPy).

``select_ops(device)`` picks one; importing this package never imports CuPy.
"""

from agentcore.engine.backends.cuda import cuda_available, select_ops

__all__ = ["cuda_available", "select_ops"]
