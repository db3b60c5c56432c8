"""A small deterministic tokenizer for models trained from scratch on the puzzles.

Why this design:
- Every grid glyph of every environment (Sokoban `# _ O √ X P S`, Maze `# _ P G`, Taxi
  `+ - | : _ R G Y B T F P D A E H W`, ...) must be exactly one token whatever its neighbours, so a
  grid encodes at one token per cell with no separator. The pre-tokenizer therefore only groups
  *words* (an optional space, an optional capital, then one or more lower-case letters: `Up`,
  ` Right`, `reward`); every other character (capitals not followed by lower case, digits,
  punctuation, symbols, each whitespace character) is its own piece. The BPE model then merges
  letters inside words only.
- BPE (trained on a built-in corpus of the prompts' words, action names in any case, digits and
  glyphs) rather than a word list: an unseen word still encodes (into sub-words / letters); only
  characters outside the alphabet (printable ASCII + the glyphs) become `<unk>`.
- Added tokens: `<think>`, `</think>`, `<answer>`, `</answer>`, the action separator `||` (plain added
  tokens: kept by `decode(..., skip_special_tokens=True)` so answers stay readable), and the special
  tokens `<pad>`, `<unk>`, `<eos>`, `<|im_start|>`, `<|im_end|>`. Consequence: a grid in which two `|`
  glyphs touch (random Taxi grids) would contain the separator token, so `GridCodec` picks a cell
  separator for such envs (see codec.py).
- `eos_token` is `<|im_end|>`: chat generations end with it, so sampling stops on `eos_token_id`.
  `<eos>` is an extra end-of-document marker for non-chat corpora.
- The chat template is ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), with no default system turn.
The vocabulary is ~1.4k tokens (BPE stops when the corpus has no pair left); the build is deterministic (same corpus, same JSON).
"""

from __future__ import annotations

import string
from typing import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Glyphs of all environments (a superset is harmless: they only enter the alphabet).
ENV_GLYPHS = "#_O√XPS" + "#_PG" + "+-|:_RGYBTFPDAEHW"
ACTION_WORDS = ("Up", "Down", "Left", "Right", "South", "North", "East", "West", "Pickup", "Dropoff")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>", "<|im_start|>", "<|im_end|>")
ADDED_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "||")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Words: optional leading space, optional capital, lower-case run. Everything else: one character.
PRETOKENIZE_REGEX = r" ?\p{Lu}?\p{Ll}+|\s|[^\s]"

_WORDS = """
system user assistant you are an agent that plays a puzzle game the grid world sokoban maze taxi
player box boxes target targets wall walls empty floor on off goal passenger destination site sites
road corner border move moves moved push pushes pushed pull pick up drop pickup dropoff picked dropped
reward rewards step steps turn turns left remaining action actions answer think thinking plan
valid invalid format your current state new observation feedback after executing executed
is are was were be been it its this these those there here to of in at by for with from into onto
and or not no yes if then else when while each every all any some one two three four five six
seven eight nine ten first last next previous before row rows column columns col cell cells
symbol symbols legend meaning means means: rules rule solve solved success failure done episode
game over win won lose lost maximum max minimum min number count total score penalty bonus
please write give output reply respond between separated separate use only list sequence of
example e g i e note carrying waiting destination taxi taxis wait carry carries location locations
north south east west up down left right top bottom above below side position positions
can cannot must should may will would could do does did make makes made take takes took
x y blocked free occupied reach reached reaching illegal legal correct wrong try again
""".split()


def _corpus(extra_texts: Sequence[str]) -> list[str]:
    lines = []
    for w in _WORDS + list(ACTION_WORDS):
        for form in (w.lower(), w.capitalize()):
            lines += [form, " " + form]
    lines.append(" ".join(_WORDS))
    lines.append(" || ".join(ACTION_WORDS))
    lines.append(ENV_GLYPHS + string.digits + string.punctuation)
    lines += ["Reward: -0.1", "Reward: 10.9", "<think>I move the box</think><answer>Up || Right</answer>"]
    lines += list(extra_texts)
    return lines


def build_scratch_tokenizer(extra_texts: Iterable[str] = (), vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Trains the BPE tokenizer on the built-in corpus (+ `extra_texts`, e.g. prompts); deterministic.

    Save with `tok.save_pretrained(dir)`, load with `transformers.AutoTokenizer.from_pretrained(dir)`
    or `PreTrainedTokenizerFast.from_pretrained(dir)`.
    """
    tk = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated")
    tk.decoder = decoders.Fuse()
    alphabet = sorted(set(string.printable) - set("\x0b\x0c") | set(ENV_GLYPHS))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
    )
    tk.train_from_iterator(_corpus(list(extra_texts)), trainer=trainer)
    tk.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in ADDED_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<eos>", "<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
