"""Tokenizer loading: no checkpoint code runs, no prompt, and both released file kinds agree.

The SentencePiece model is trained here (Llama's settings: BPE, byte fallback, dummy prefix) so
the test has a real ``tokenizer.model`` without downloading one; sentencepiece's own encoder is
the independent reference for the ids.
"""
import io
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from specprune_ros.model.prompt import build_prompt, encode_prompt, load_tokenizer

sentencepiece = pytest.importorskip("sentencepiece")

CORPUS = [
    "pick up the black bowl and place it on the plate", "put the cup on the plate",
    "open the top drawer and put the bowl inside", "turn on the stove", "stack the red block on the green block",
    "In: What action should the robot take to close the microwave?\nOut:",
]
INSTRUCTIONS = ["put the cup on the plate", "Pick up the Black Bowl", "stack the red block on the green block",
                "grasp the 2 yellow mugs"]
# Checkpoint code that must never run: importing it leaves a marker and fails loudly.
EVIL = textwrap.dedent('''
    import pathlib
    pathlib.Path(__file__).with_name("IMPORTED").write_text("checkpoint code ran")
    raise SystemExit("checkpoint code must never be imported")
''')


@pytest.fixture(scope="module")
def spm_model():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 40), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return model.getvalue()


def released_tokenizer_dir(path, spm_model):
    """tokenizer.model plus the released JSON files, with auto_map entries pointing at code."""
    path.mkdir()
    (path / "tokenizer.model").write_bytes(spm_model)
    auto_map = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                "AutoTokenizer": ["tokenization_prismatic.Tok", None],
                "AutoProcessor": "processing_prismatic.PrismaticProcessor"}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "legacy": False, "model_max_length": 2048, "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer", "auto_map": auto_map}))
    (path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "unk_token": "<unk>"}))
    (path / "config.json").write_text(json.dumps({"model_type": "openvla", "auto_map": auto_map}))
    for module in ("configuration_prismatic", "tokenization_prismatic", "processing_prismatic"):
        (path / f"{module}.py").write_text(EVIL)
    return path


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory, spm_model):
    return released_tokenizer_dir(tmp_path_factory.mktemp("spm") / "ckpt", spm_model)


@pytest.fixture(scope="module")
def json_dir(spm_dir, tmp_path_factory):
    """The same tokenizer as tokenizer.json (what released checkpoints may ship beside it)."""
    path = tmp_path_factory.mktemp("json") / "ckpt"
    shutil.copytree(spm_dir, path)
    load_tokenizer(spm_dir).save_pretrained(str(path / "converted"))
    shutil.move(path / "converted" / "tokenizer.json", path / "tokenizer.json")
    (path / "tokenizer.model").unlink()
    return path


def test_checkpoint_code_is_never_run_and_nothing_asks(spm_dir):
    """A fresh process, stdin closed: loads silently and quickly, imports nothing of the checkpoint."""
    script = textwrap.dedent(f'''
        import sys, time
        import transformers
        from specprune_ros.model.prompt import load_tokenizer
        transformers.LlamaTokenizerFast, transformers.PreTrainedTokenizerFast   # imports are not the load
        start = time.perf_counter()
        tok = load_tokenizer({str(spm_dir)!r})
        print("seconds", time.perf_counter() - start)
        print("ids", tok("put the cup")["input_ids"])
    ''')
    done = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (spm_dir / "IMPORTED").exists()
    assert "custom code" not in done.stdout + done.stderr and "[y/N]" not in done.stdout + done.stderr
    seconds = float(done.stdout.split("seconds", 1)[1].split()[0])
    assert seconds < 1.0, f"loading took {seconds:.2f} s"


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_both_file_kinds_give_sentencepiece_ids(spm_dir, json_dir, spm_model, instruction):
    from_model, from_json = load_tokenizer(spm_dir), load_tokenizer(json_dir)
    a, b = encode_prompt(from_model, instruction), encode_prompt(from_json, instruction)
    assert a == b
    reference = sentencepiece.SentencePieceProcessor(model_proto=spm_model)
    expected = [reference.bos_id()] + reference.encode(build_prompt(instruction))
    if reference.piece_to_id("\u2581") != expected[-1]:
        expected.append(reference.piece_to_id("\u2581"))
    assert list(a.ids) == expected
    assert reference.decode([a.ids[i] for i in a.instruction_positions]) == instruction.lower()
    assert not (spm_dir / "IMPORTED").exists() and not (json_dir / "IMPORTED").exists()


def test_broken_tokenizer_model_is_one_error(tmp_path, spm_model):
    path = released_tokenizer_dir(tmp_path / "ckpt", spm_model)
    (path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=r"tokenizer.model: cannot load the tokenizer"):
        load_tokenizer(path)
