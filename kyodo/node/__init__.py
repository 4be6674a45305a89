"""The composition root: one node process wiring every component."""

from kyodo.node._config import NodeConfig
from kyodo.node._node import Node, run_node

__all__ = ["Node", "NodeConfig", "run_node"]
