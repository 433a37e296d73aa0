"""Our modules against independent implementations of the same weights (transformers)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from specprune_ros.model.checkpoint import init_random_  # noqa: E402
from specprune_ros.model.config import DINOV2_L, SIGLIP_SO400M, LlamaConfig  # noqa: E402
from specprune_ros.model.llama import LlamaBackbone  # noqa: E402
from specprune_ros.model.vision import ViTFeaturizer  # noqa: E402


def small_vit(base, mlp_dim):
    from dataclasses import replace
    return replace(base, dim=32, depth=4, heads=2, mlp_dim=mlp_dim)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_llama_equals_transformers_with_bidirectional_attention(kv_heads):
    cfg = LlamaConfig(hidden=64, layers=3, heads=4, kv_heads=kv_heads, intermediate=96, vocab=120, rms_eps=1e-5,
                      rope_theta=10000.0, max_positions=256)
    ours = init_random_(LlamaBackbone(cfg), seed=3).eval()
    hf_cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=kv_heads, intermediate_size=96, vocab_size=120,
                                      rms_norm_eps=1e-5, max_position_embeddings=256, rope_theta=10000.0)
    hf_cfg._attn_implementation = "sdpa"
    ref = transformers.LlamaModel(hf_cfg).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all("rotary" in k for k in unexpected)
    x = torch.randn(1, 40, 64)
    bidirectional = torch.zeros(1, 1, 40, 40)            # OFT: every token sees every token
    with torch.no_grad():
        expected = ref(inputs_embeds=x, attention_mask=bidirectional).last_hidden_state
        causal = ref(inputs_embeds=x).last_hidden_state
        got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - causal).abs().max() > 1e-3              # and it is not the causal model


def test_dinov2_equals_transformers_dinov2_with_registers():
    cfg = small_vit(DINOV2_L, mlp_dim=128)
    ours = init_random_(ViTFeaturizer(cfg), seed=1).eval()
    hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=cfg.depth, num_attention_heads=2, mlp_ratio=4, image_size=224,
        patch_size=14, num_register_tokens=4, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)).eval()
    sd = ours.state_dict()
    d = cfg.dim
    mapped = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.register_tokens": sd["reg_token"],
        # timm (no_embed_class): no CLS position; HF adds one, so give it zeros.
        "embeddings.position_embeddings": torch.cat([torch.zeros(1, 1, d), sd["pos_embed"]], dim=1),
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
    }
    for i in range(cfg.feature_layer + 1):
        p, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), sd[p + f"attn.qkv.{kind}"].chunk(3)):
                mapped[h + f"attention.{name}.{kind}"] = part
        for ours_name, hf_name in (("attn.proj", "attention.o_proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                                   ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            mapped[h + hf_name + ".weight"] = sd[p + ours_name + ".weight"]
            mapped[h + hf_name + ".bias"] = sd[p + ours_name + ".bias"]
        mapped[h + "layer_scale1.lambda1"] = sd[p + "ls1.scale_factor"]
        mapped[h + "layer_scale2.lambda1"] = sd[p + "ls2.scale_factor"]
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("encoder.layer.3.", "layernorm", "embeddings.mask_token")) for k in missing), missing
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[cfg.feature_layer + 1][:, 5:]
        got = ours(pixels)
    assert got.shape == (2, 256, 32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_siglip_equals_transformers_siglip_vision_model():
    cfg = small_vit(SIGLIP_SO400M, mlp_dim=80)
    ours = init_random_(ViTFeaturizer(cfg), seed=2).eval()
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=80, num_hidden_layers=cfg.depth, num_attention_heads=2, image_size=224,
        patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6)).eval()
    sd = ours.state_dict()
    root = "vision_model." if any(k.startswith("vision_model.") for k in hf.state_dict()) else ""
    mapped = {
        root + "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        root + "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
        root + "embeddings.position_embedding.weight": sd["pos_embed"][0],
    }
    for i in range(cfg.feature_layer + 1):
        p, h = f"blocks.{i}.", f"{root}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), sd[p + f"attn.qkv.{kind}"].chunk(3)):
                mapped[h + f"self_attn.{name}.{kind}"] = part
            for ours_name, hf_name in (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"),
                                       ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                mapped[h + f"{hf_name}.{kind}"] = sd[p + f"{ours_name}.{kind}"]
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not unexpected
    unused = ("encoder.layers.3.", "post_layernorm", "head.")
    assert all(k.removeprefix(root).startswith(unused) for k in missing), missing
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[cfg.feature_layer + 1]
        got = ours(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
