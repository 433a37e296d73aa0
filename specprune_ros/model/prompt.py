"""The OFT prompt, its tokens, and which of them are the instruction (used for scoring).

``In: What action should the robot take to {instruction}?\\nOut:`` followed by the "▁" token
(Llama id 29871) when the tokenizer did not end on it. Instruction positions come from the fast
tokenizer's character offsets, so they follow the actual prompt (never a hard-coded 34-token
template).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPT_PREFIX = "In: What action should the robot take to "
PROMPT_SUFFIX = "?\nOut:"
SPACE_PIECE = "\u2581"


@dataclass(frozen=True)
class EncodedPrompt:
    ids: tuple[int, ...]                  # BOS, prompt tokens, trailing "▁"
    instruction_positions: tuple[int, ...]  # indices into ids of the instruction's tokens


def build_prompt(instruction: str) -> str:
    return f"{PROMPT_PREFIX}{instruction.strip().lower()}{PROMPT_SUFFIX}"


def encode_prompt(tokenizer, instruction: str) -> EncodedPrompt:
    """Token ids of the prompt and the positions of the instruction tokens among them."""
    if not instruction or not instruction.strip():
        raise ValueError("the instruction is empty: the policy needs a task description")
    text = build_prompt(instruction)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
        offsets.insert(0, (0, 0))
    space_id = tokenizer.convert_tokens_to_ids(SPACE_PIECE)
    if space_id is not None and space_id != tokenizer.unk_token_id and ids[-1] != space_id:
        ids.append(space_id)
        offsets.append((0, 0))
    start, stop = len(PROMPT_PREFIX), len(text) - len(PROMPT_SUFFIX)
    positions = tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start)
    if not positions:
        raise ValueError(f"the tokenizer produced no tokens for the instruction {instruction!r}")
    return EncodedPrompt(tuple(ids), positions)


# ---- a small local tokenizer for tiny checkpoints (no download, deterministic) ----------------

_CORPUS = """
pick up the black bowl and place it on the plate put the cup on the plate
open the top drawer of the cabinet and put the bowl inside turn on the stove
put both the alphabet soup and the tomato sauce in the basket push the plate to the front of the stove
pick up the ketchup and place it in the basket put the wine bottle on top of the cabinet
close the microwave put the cream cheese in the bowl stack the red block on the green block
in: what action should the robot take to ? out: move the arm left right up down forward backward
grasp the handle rotate the knob slide the door insert the peg into the hole wipe the table
"""


@lru_cache(maxsize=4)
def build_tiny_tokenizer(vocab_size: int = 1000, extra_corpus: tuple[str, ...] = ()):
    """A Llama-style (metaspace, byte fallback free) BPE tokenizer trained on a fixed corpus.

    ``extra_corpus``: lines added to the corpus, e.g. a task's instructions, so each of their
    words becomes one token (a model trained from scratch then reads a word from one embedding,
    not from the characters of several).

    Special tokens as in Llama: <unk>=0, <s>=1, </s>=2; "▁" is in the vocabulary, and
    ``<PAD>`` is added after the vocabulary as OpenVLA does (id = vocab_size).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE_PIECE, prepend_scheme="first"),
        pre_tokenizers.Split(Regex(r"[?:.,!;\n]"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE_PIECE, prepend_scheme="first")
    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'-_/()\n"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet + [SPACE_PIECE], show_progress=False)
    lines = _CORPUS.strip().splitlines() + list(extra_corpus)
    corpus = lines + [build_prompt(line) for line in (_CORPUS.splitlines() + list(extra_corpus))]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=2048, padding_side="right")
    fast.add_special_tokens({"pad_token": "<PAD>"})
    return fast


def load_tokenizer(directory: str | Path):
    """The checkpoint's own tokenizer, from local files only, never running checkpoint code.

    Released checkpoints carry an ``auto_map`` to Python files in ``config.json`` /
    ``tokenizer_config.json``; ``AutoTokenizer`` would ask on the terminal whether to run them
    (and run them on "y"). A concrete tokenizer class with ``trust_remote_code=False`` never
    looks at ``auto_map``: ``tokenizer.json`` is read as it is (the fast tokenizer the reference
    uses), otherwise ``tokenizer.model`` (SentencePiece) is converted by transformers' Llama
    converter, which needs the ``sentencepiece`` and ``protobuf`` packages.
    """
    import transformers

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        cls, source = transformers.PreTrainedTokenizerFast, directory / "tokenizer.json"
    elif (directory / "tokenizer.model").is_file():
        cls, source = transformers.LlamaTokenizerFast, directory / "tokenizer.model"
    else:
        raise FileNotFoundError(f"{directory}: no tokenizer.json or tokenizer.model")
    try:
        tokenizer = cls.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for broken files
        raise ValueError(f"{source}: cannot load the tokenizer: {_first_line(exc)}") from None
    if tokenizer.bos_token_id is None:
        raise ValueError(f"{source}: the tokenizer has no BOS token (<s>)")
    return tokenizer


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
