"""Generic CPU schedule (placeholder while converters are brought up)."""

from __future__ import annotations

import tvm


@tvm.transform.module_pass(opt_level=0, name="mdoc.ScheduleCPU")
class ScheduleCPU:
    def __init__(self, target):
        self.target = target

    def transform_module(self, mod, ctx):
        return mod
