"""Model specs: the grammar (no torch) and the builder (imported lazily, it needs torch).

``from convrnn.spec import parse`` never imports torch; ``from convrnn.spec import build_model``
imports the builder on first use.
"""
from convrnn.spec.grammar import OpSchema, OpSpec, Param, format_spec, parse

_BUILDER_NAMES = ("build_model", "register_op", "SpecModel", "Summary", "SummaryRow", "BuildContext")

__all__ = ["OpSchema", "OpSpec", "Param", "format_spec", "parse", *_BUILDER_NAMES]


def __getattr__(name: str):
    if name in _BUILDER_NAMES:
        from convrnn.spec import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'convrnn.spec' has no attribute {name!r}")
