"""mdoc's built-in passes, one pass (or one family of rewrite rules) per module.

Importing this package imports every module in it, and each registers itself
with `@register_pass` or `@rewrite_rule`; the core finds them through the
`mdoc.passes` entry point, never by name.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
