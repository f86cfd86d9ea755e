"""Command groups of the CLI beyond the core ones in ``convrnn.cli``; each module has ``register(cli)``."""
