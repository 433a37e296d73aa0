"""Writing a tiny checkpoint in the released layout, loading it back, and every way it can break."""
import json
import shutil

import pytest
import torch

from specprune_ros.model.checkpoint import CheckpointError, load_checkpoint, write_tiny_checkpoint


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-oft")


@pytest.fixture
def ckpt(written, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(written, tmp_path / "ckpt")


def test_released_layout(written):
    names = {p.name for p in written.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "dataset_statistics.json",
            "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "added_tokens.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "action_head--1000_checkpoint.pt", "proprio_projector--1000_checkpoint.pt"} <= names
    index = json.loads((written / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in keys        # unused, but released
    assert "language_model.model.layers.31.self_attn.q_proj.weight" in keys
    assert "language_model.lm_head.weight" in keys and "projector.fc3.bias" in keys
    head = torch.load(written / "action_head--1000_checkpoint.pt", weights_only=True)
    assert all(k.startswith("module.") for k in head) and "module.model.mlp_resnet_blocks.1.ffn.1.weight" in head
    assert all(v.dtype == torch.bfloat16 for v in head.values())
    config = json.loads((written / "config.json").read_text())
    assert config["model_type"] == "openvla" and config["text_config"]["num_hidden_layers"] == 32


@torch.inference_mode()
def test_loading_gives_the_in_memory_model(written, tiny, tiny_inputs):
    loaded = load_checkpoint(written, device="cpu")
    _, pixels, proprio, prompt = tiny_inputs
    expected, _ = tiny.model.predict(pixels, proprio, prompt)
    got, _ = loaded.model.predict(pixels, proprio, prompt)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.tokenizer("pick up")["input_ids"] == tiny.tokenizer("pick up")["input_ids"]
    assert loaded.stats.key == "tiny_random"


def expect(ckpt, message, **kwargs):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt, device="cpu", **kwargs)


def test_missing_directory(tmp_path):
    expect(tmp_path / "nope", "nope: checkpoint directory not found")


def test_missing_and_broken_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    expect(ckpt, r"config.json: not valid JSON")
    (ckpt / "config.json").unlink()
    expect(ckpt, r"config.json: file not found")


def test_truncated_shard(ckpt):
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    expect(ckpt, r"model-00002-of-00002.safetensors: corrupt or truncated safetensors file")


def test_missing_shard(ckpt):
    (ckpt / "model-00001-of-00002.safetensors").unlink()
    expect(ckpt, r"model-00001-of-00002.safetensors: shard listed in model.safetensors.index.json is missing")


def test_index_naming_weights_a_shard_lacks(ckpt):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.layers.99.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    expect(ckpt, r"model-00001-of-00002.safetensors: 1 weights listed in model.safetensors.index.json are not in")


def test_sizes_that_do_not_match_the_weights(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 256
    (ckpt / "config.json").write_text(json.dumps(config))
    expect(ckpt, r"index.json: language_model.model.layers.0.mlp.gate_proj.weight has shape \(128, 64\), "
                 r"the model expects \(256, 64\) \(config.json sizes do not match the weights\)")


def test_missing_and_corrupt_heads(ckpt):
    head = ckpt / "action_head--1000_checkpoint.pt"
    head.write_bytes(b"\x00garbage" * 10)
    expect(ckpt, r"action_head--1000_checkpoint.pt: cannot read the state dict")
    head.unlink()
    expect(ckpt, r"no action_head--<step>_checkpoint.pt file")


class NotAWeight:
    pass


def test_heads_load_with_weights_only(ckpt):
    # A pickle that would run code on a plain torch.load is refused.
    torch.save({"module.fc1.weight": NotAWeight()}, ckpt / "proprio_projector--2000_checkpoint.pt")
    expect(ckpt, r"proprio_projector--2000_checkpoint.pt: cannot read the state dict")


def test_head_with_the_wrong_keys(ckpt):
    torch.save({"module.something.weight": torch.zeros(2)}, ckpt / "proprio_projector--3000_checkpoint.pt")
    expect(ckpt, r"proprio_projector--3000_checkpoint.pt: missing 4 weights")


def test_statistics_key_and_files(ckpt):
    expect(ckpt, r"unnorm_key 'libero_spatial' not found \(available: tiny_random\)", unnorm_key="libero_spatial")
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())
    stats["tiny_random"]["action"]["q01"] = [0.0] * 3
    (ckpt / "dataset_statistics.json").write_text(json.dumps(stats))
    expect(ckpt, r"dataset_statistics.json: tiny_random.action.q01 has 3 values, the model needs 7")


def test_missing_tokenizer(ckpt):
    (ckpt / "tokenizer.json").unlink()
    expect(ckpt, r"no tokenizer.json or tokenizer.model")


def test_a_shipped_model_name_that_is_not_shipped_says_how_to_make_one(monkeypatch, tmp_path):
    from specprune_ros.model import checkpoint

    monkeypatch.setitem(checkpoint.SHIPPED_MODELS, "sim-tabletop", str(tmp_path / "absent"))
    with pytest.raises(CheckpointError, match="sim-tabletop: the shipped model is not in this checkout"):
        load_checkpoint("sim-tabletop", device="cpu")
    write_tiny_checkpoint(tmp_path / "absent")
    assert load_checkpoint("sim-tabletop", device="cpu").model.config.llm.layers == 32
