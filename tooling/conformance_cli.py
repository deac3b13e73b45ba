"""`mdoc conformance`: run onnx's operator test cases through mdoc and onnxruntime, print the table.

A click command that is not attached to the core's `mdoc` group here (the core
never imports `mdoc.targets` by name): the CLI picks it up through its
entry-point group, and `benchmarks/conformance.py` runs it standalone.
"""

from __future__ import annotations

import click

from . import conformance


@click.command("conformance", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--filter", "pattern", metavar="REGEX", help="Only cases whose name matches REGEX (re.search).")
@click.option("--sample", type=click.IntRange(1), metavar="N",
              help="A fixed, deterministic sample of N cases: one per op type, then every k-th by name.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample's choice per op type.")
@click.option("-j", "--jobs", type=click.IntRange(1), help="Worker processes  [default: the number of cores]")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=conformance.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds per case; a case past it is a timeout and its worker is replaced.")
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="mdoc's optimization level (passes not installed yet are left out).")
@click.option("-p", "--pipeline", help="mdoc pass pipeline (text) instead of -O.")
@click.option("--rtol", type=float, default=conformance.DEFAULT_RTOL, show_default=True,
              help="Relative tolerance floor (a case's own is used when looser).")
@click.option("--atol", type=float, default=conformance.DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance floor (a case's own is used when looser).")
@click.option("--engine", "engines", multiple=True, metavar="NAME",
              help="mdoc (the onnx Backend), mdoc-artifact (compile once, as `mdoc compile` + `mdoc run`), onnxruntime "
                   "or module:function; repeat for several  [default: mdoc and onnxruntime]")
@click.option("--no-models", is_flag=True, help="Only the node cases, not onnx's small whole-model cases.")
@click.option("--no-cache", is_flag=True, help="Run every case again (results are still written to the cache).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where results are cached  "
              "[default: .cache/conformance in the source checkout]")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write every case's results as JSON.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False), help="Write the report as Markdown.")
@click.option("-q", "--quiet", is_flag=True, help="No line per case; only the report.")
def conformance_cmd(pattern, sample, seed, jobs, timeout, opt_level, pipeline, rtol, atol, engines, no_models,
                    no_cache, cache_dir, json_out, markdown_out, quiet) -> None:
    """Run onnx's operator conformance cases through mdoc and onnxruntime, side by side.

    Classifies each case (passed, import / build / run failure, wrong result,
    timeout, out of scope, not tensor), caches results by case, mdoc version and
    a hash of mdoc's sources, and prints a Markdown table by op type with the
    most common failure messages.
    """
    if pipeline and opt_level != 2:
        raise click.UsageError("give either -O LEVEL or -p PIPELINE, not both")
    try:
        conformance.main(filter=pattern, sample=sample, seed=seed, jobs=jobs, timeout=timeout, opt_level=opt_level,
                         pipeline=pipeline, rtol=rtol, atol=atol, use_cache=not no_cache, cache_dir=cache_dir,
                         json_out=json_out, markdown_out=markdown_out, engines=tuple(engines) or conformance.ENGINES,
                         with_models=not no_models, verbose=not quiet, echo=click.echo)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
