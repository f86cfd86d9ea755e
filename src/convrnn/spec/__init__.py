"""Model specs: the grammar (no torch), the builder and the presets (imported lazily, they need torch).

``from convrnn.spec import parse`` never imports torch; ``from convrnn.spec import build_model`` (or
``create_model``, ``get_preset``, ``list_models``) imports the builder on first use.
"""
from convrnn.spec.grammar import OpSchema, OpSpec, Param, format_spec, parse

_BUILDER_NAMES = ("build_model", "register_op", "SpecModel", "Summary", "SummaryRow", "BuildContext")
_PRESET_NAMES = ("create_model", "get_preset", "list_models", "register_model", "Preset")

__all__ = ["OpSchema", "OpSpec", "Param", "format_spec", "parse", *_BUILDER_NAMES, *_PRESET_NAMES]


def __getattr__(name: str):
    if name in _BUILDER_NAMES:
        from convrnn.spec import builder

        return getattr(builder, name)
    if name in _PRESET_NAMES:
        from convrnn.spec import presets

        return getattr(presets, name)
    raise AttributeError(f"module 'convrnn.spec' has no attribute {name!r}")
