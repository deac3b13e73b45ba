"""mdoc's target backends: lowering into TVM Relax, target presets, kernels, artifacts."""
