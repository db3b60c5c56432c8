"""Command-line text generation with the jitted sampler.

    python -m wmact_jax.generate --model smollm2-135m-instruct --prompt "Hi" --chat --max-new-tokens 32

Prints the continuation only on stdout (loading chatter goes to stderr), so the output can be piped.
`--model` is anything `wmact_jax.checkpoints.load_pretrained` accepts: an HF folder, a .gguf file, an
Orbax export or a known name. Exit status 2 with a one-line message for a missing/unreadable model.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wmact_jax.generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF folder, .gguf file, Orbax export or known name")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", default=None, help="optional system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--keep-special", action="store_true", help="print special tokens (e.g. the EOS) too")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    return args


def encode_prompt(tokenizer, text: str, chat: bool, system: str | None = None) -> list[int]:
    """Prompt text -> ids; with chat, the tokenizer's own template with add_generation_prompt=True."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat: this tokenizer has no chat template")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    return list(tokenizer.encode(text))


def main(argv=None) -> int:
    args = parse_args(argv)
    out = sys.stdout
    # Anything printed while loading (libraries, warnings) must not pollute the continuation on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        from wmact_jax.checkpoints import CheckpointError, load_pretrained

        try:
            config, model, tokenizer = load_pretrained(args.model, args.dtype)
        except (CheckpointError, FileNotFoundError, OSError) as e:
            print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
            return 2
        if tokenizer is None:
            print(f"error: no tokenizer found for {args.model!r}", file=sys.stderr)
            return 2
        try:
            ids = encode_prompt(tokenizer, args.prompt, args.chat, args.system)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not ids:
            print("error: the prompt encodes to zero tokens", file=sys.stderr)
            return 2

        import jax

        from wmact_jax import sampler

        eos = set(config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(int(tokenizer.eos_token_id))
        if args.chat:  # chat templates end turns with their own marker (e.g. <|im_end|>)
            for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
                tid = tokenizer.convert_tokens_to_ids(t) if hasattr(tokenizer, "convert_tokens_to_ids") else None
                if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
                    eos.add(tid)
        params = sampler.SamplingParams(args.temperature, args.top_k, args.top_p)
        res = sampler.generate(model, [ids], max_new_tokens=args.max_new_tokens, params=params,
                               key=jax.random.key(args.seed), eos=sorted(eos) or None)
        gen = res.tokens[0]
        if not args.keep_special and gen and res.stopped[0] and gen[-1] in eos:
            gen = gen[:-1]
        text = tokenizer.decode(gen, skip_special_tokens=not args.keep_special)
    out.write(text + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
