"""`mdoc generate ARTIFACT --input-ids 1,2,3`: tokens from a compiled decoder, with prefill and decode speed."""

from __future__ import annotations

import click

from ..backends import load_artifact
from ..cli_options import emit_json, json_option
from ..errors import MdocError
from ..generation import Decoder
from .group import cli


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MdocError(f"--input-ids: {text!r} is not a comma-separated list of token ids") from None


@cli.command("generate")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--input-ids", "input_ids", required=True, metavar="ID,ID,...", help="The prompt's token ids.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0: greedy (argmax); above 0: sample from softmax(logits / T).")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sample among the k likeliest (0: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eos-id", type=int, default=None, help="Stop after this token.")
@json_option
def generate_cmd(artifact, input_ids, max_new_tokens, temperature, top_k, seed, eos_id, as_json) -> None:
    """Generate tokens with ARTIFACT, a decoder compiled with its past key/values: a prefill, then one call per
    token with the KV cache kept in the runtime. Prints the new token ids and tokens per second."""
    decoder = Decoder(load_artifact(artifact), artifact)
    result = decoder.generate(_ids(input_ids), max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                              eos=eos_id)
    stats = result.stats()
    if as_json:
        emit_json({"tokens": result.tokens, **stats})
        return
    click.echo(" ".join(str(t) for t in result.tokens))
    decode = (f"{stats['decode_tokens_per_s']:.1f} tokens/s ({len(result.tokens) - 1} tokens in "
              f"{stats['decode_ms']:.1f} ms)") if stats["decode_tokens_per_s"] else "none"
    click.echo(f"prefill: {result.prompt_tokens} tokens in {stats['prefill_ms']:.1f} ms "
               f"({stats['prefill_tokens_per_s']:.1f} tokens/s); decode: {decode}")
