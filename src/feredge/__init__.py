"""feredge: facial-expression recognition at the edge.

The import root of one distribution. ``feredge.edge`` (folder ``edge/``) is the device side and never
imports TensorFlow; ``feredge.export`` (folder ``export/``) is the workstation side. The folders keep
the design card's names; ``pyproject.toml`` maps them under ``feredge`` so that installing feredge
never shadows another distribution's top-level ``edge`` or ``export`` package.
"""

__version__ = "0.1.0"
