"""mdoc -O2's transformer fusions against onnxruntime's transformer optimizer, on the same files.

    python benchmarks/fusion_counts.py [--only NAME,...] [--keep DIR]

Models: the zoo's `bert_encoder` (BERT-mini, exported-by-PyTorch style), and
Hugging Face `BertModel`s built from seeded configs (no downloads) in two
sizes, BERT-mini (hidden 256, 4 layers, 4 heads) and MiniLM (hidden 384, 6
layers, 12 heads), each exported by both torch.onnx exporters: TorchScript
(`dynamo=False`) at opset 14 (LayerNorm and GELU decomposed) and at its default
opset (LayerNormalization and Gelu ops), and dynamo (`dynamo=True`), with the
eager and the sdpa attention of transformers. The exports need `torch`,
`transformers` and `onnxscript` (install torch as `pip install torch==2.13.0`);
without them only the zoo row runs.

Per file, LN / GELU / attention counts:
- mdoc: mdoc.layer_norm + mdoc.skip_layer_norm, mdoc.gelu (alone, or fused into an mdoc.matmul as its
  activation), mdoc.attention after -O2;
- ORT: `onnxruntime.transformers.optimizer.optimize_model(path, model_type="bert", num_heads, hidden_size)`
  then `get_fused_operator_statistics()`: LayerNormalization + SkipLayerNormalization +
  EmbedLayerNormalization (+ the Simplified ones), Gelu + BiasGelu + FastGelu + GemmFastGelu +
  QuickGelu, Attention + MultiHeadAttention.
`same` says whether mdoc's optimized file computes the original's outputs in onnxruntime (rtol 1e-4).
Exit status 1 when mdoc fuses fewer than onnxruntime anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections import Counter

# This folder holds a `kernels.py`, and transformers imports a package of that name: keep the folder
# off the import path that `python benchmarks/fusion_counts.py` puts first.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from mdoc.model_io import load_model  # noqa: E402
from mdoc.models import build, example_inputs  # noqa: E402
from mdoc.onnx_export import export_model  # noqa: E402
from mdoc.pass_manager import PassManager, pipeline_for_level  # noqa: E402
from mdoc.reference import compare_outputs, run_onnxruntime  # noqa: E402

KINDS = ("LN", "GELU", "attention")
MDOC_OPS = {"LN": ("mdoc.layer_norm", "mdoc.skip_layer_norm"), "GELU": ("mdoc.gelu",),
            "attention": ("mdoc.attention",)}
ORT_OPS = {"LN": ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
                  "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"),
           "GELU": ("Gelu", "BiasGelu", "FastGelu", "GemmFastGelu", "QuickGelu"),
           "attention": ("Attention", "MultiHeadAttention")}

CONFIGS = {  # name: (hidden, layers, heads, intermediate)
    "bert-mini": (256, 4, 4, 1024),
    "minilm": (384, 6, 12, 1536),
}
EXPORTS = {  # name: (dynamo, opset or None for the exporter's default)
    "ts14": (False, 14),
    "ts": (False, None),
    "dynamo": (True, None),
}


def export_hf(path: str, config: str, exporter: str, attention: str, seq: int = 16) -> None:
    """A seeded Hugging Face BertModel, exported with dynamic batch and sequence axes."""
    import torch
    from transformers import BertConfig, BertModel

    hidden, layers, heads, inter = CONFIGS[config]
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, vocab_size=8192)
    cfg._attn_implementation = attention
    bert = BertModel(cfg).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    dynamo, opset = EXPORTS[exporter]
    ids = torch.randint(0, 8192, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    kw = {"opset_version": opset} if opset else {}
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state", "pooler_output"])
    if dynamo:
        dims = {0: torch.export.Dim("N"), 1: torch.export.Dim("S", min=2, max=512)}
        kw["dynamic_shapes"] = (dims, dims)
    else:
        kw["dynamic_axes"] = {"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "S"}}
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (ids, mask), path, dynamo=dynamo, **names, **kw)


def mdoc_counts(path: str) -> tuple[dict[str, int], bool]:
    model = load_model(path)
    PassManager(pipeline_for_level(2)).run(model)
    # a GELU that fuse-epilogue took into its matmul's kernel is an mdoc.matmul {activation = gelu}
    ops = Counter("mdoc.gelu" if n.op == "mdoc.matmul" and str(n.attrs.get("activation", "")).startswith("gelu")
                  else n.op for n in model.graph.walk())
    counts = {k: sum(ops[o] for o in MDOC_OPS[k]) for k in KINDS}
    feeds = inputs_for(onnx.load(path, load_external_data=False))
    diffs = compare_outputs(run_onnxruntime(path, feeds), run_onnxruntime(export_model(model), feeds),
                            rtol=1e-4, atol=1e-4)
    return counts, all(d.ok for d in diffs)


def ort_counts(path: str, heads: int, hidden: int) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        stats = optimize_model(path, model_type="bert", num_heads=heads, hidden_size=hidden
                               ).get_fused_operator_statistics()
    logging.disable(logging.NOTSET)
    return {k: sum(stats.get(o, 0) for o in ORT_OPS[k]) for k in KINDS}


def inputs_for(proto: onnx.ModelProto, seq: int = 16) -> dict[str, np.ndarray]:
    """Token ids and a mask with padding, batch 2 (the zoo file carries its own example inputs)."""
    example = example_inputs(proto) if any(p.key == "mdoc.example_inputs" for p in proto.metadata_props) else None
    if example is not None:
        return example
    rng = np.random.default_rng(0)
    mask = np.ones((2, seq), np.int64)
    mask[1, seq // 2:] = 0
    return {"input_ids": rng.integers(0, 8192, (2, seq)).astype(np.int64), "attention_mask": mask}


def sources(only: set[str] | None, folder: str, failed: list[str]):
    """(name, path, heads, hidden) of each model to count, exporting the Hugging Face ones into `folder`;
    the names of exports that failed go to `failed`."""
    if not only or "zoo" in only:
        path = os.path.join(folder, "zoo_bert_encoder.onnx")
        onnx.save(build("bert_encoder"), path)
        yield "zoo bert_encoder", path, 4, 256
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("(torch or transformers not installed: Hugging Face exports skipped)", file=sys.stderr)
        return
    for config, (hidden, _, heads, _) in CONFIGS.items():
        for exporter in EXPORTS:
            for attention in ("eager", "sdpa"):
                name = f"{config} {exporter} {attention}"
                if only and not any(o in name for o in only):
                    continue
                path = os.path.join(folder, f"{config}_{exporter}_{attention}.onnx")
                try:
                    export_hf(path, config, exporter, attention)
                except Exception as e:  # an exporter that cannot export this combination: say so, go on
                    print(f"{name}: export failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}",
                          file=sys.stderr)
                    failed.append(name)
                    continue
                yield name, path, heads, hidden


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated substrings of the model names to run (zoo, bert-mini, ts14, ...)")
    ap.add_argument("--keep", help="keep the exported files in this folder")
    args = ap.parse_args()
    only = {o.strip() for o in args.only.split(",")} if args.only else None
    folder = args.keep or tempfile.mkdtemp(prefix="mdoc-fusion-counts-")
    os.makedirs(folder, exist_ok=True)
    print("| model | opset | LN mdoc / ORT | GELU mdoc / ORT | attention mdoc / ORT | same |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    behind, failed = [], []
    for name, path, heads, hidden in sources(only, folder, failed):
        imports = onnx.load(path, load_external_data=False).opset_import
        opset = next(o.version for o in imports if o.domain in ("", "ai.onnx"))
        mine, same = mdoc_counts(path)
        theirs = ort_counts(path, heads, hidden)
        cells = " | ".join(f"{mine[k]} / {theirs[k]}" for k in KINDS)
        print(f"| {name} | {opset} | {cells} | {'yes' if same else 'NO'} |", flush=True)
        behind += [f"{name} {k}" for k in KINDS if mine[k] < theirs[k]]
        if not same:
            behind.append(f"{name} outputs")
    if failed:
        print(f"could not export: {', '.join(failed)}")
    if behind:
        print(f"mdoc is behind onnxruntime on: {', '.join(behind)}")
    if behind or failed:
        return 1
    print("mdoc fuses at least as much as onnxruntime on every model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
