"""Collects every command module onto the root group (each module adds its commands on import)."""

from . import (  # noqa: F401
    bench_cmd,
    compare_cmd,
    compile_cmd,
    distill_cmd,
    generate_cmd,
    import_cmd,
    inspect_cmd,
    opt_cmd,
    passes_cmd,
    quantize_cmd,
    print_cmd,
    prune_cmd,
    run_cmd,
    zoo_cmd,
)
from .group import cli

__all__ = ["cli"]
