import pytest
import torch

from specprune_ros.config import Config
from specprune_ros.pruning.stopwatch import Stopwatch
from specprune_ros.pruning.strategy import check_layers, make_strategy


def test_sequence_layout_matches_the_oft_order(tiny, tiny_inputs):
    _, pixels, proprio, prompt = tiny_inputs
    model = tiny.model
    x = model.embed(pixels, proprio, prompt)
    layout = model.layout(prompt, 2)
    n_vis, a = 512, model.config.num_action_tokens
    assert x.shape[1] == layout.seq_len == 1 + n_vis + 1 + (len(prompt.ids) - 1) + a + 1
    emb = model.llm.embed_tokens.weight
    torch.testing.assert_close(x[0, 0], emb[prompt.ids[0]])                       # BOS first
    ids = torch.tensor(prompt.ids)
    # Instruction tokens sit where the layout says (they are scored), after patches and proprio.
    instr = [prompt.ids[i] for i in prompt.instruction_positions]
    torch.testing.assert_close(x[0, list(layout.text_positions)], emb[instr])
    assert min(layout.text_positions) > n_vis + 1
    torch.testing.assert_close(x[0, 1 + n_vis + 1:1 + n_vis + len(prompt.ids)], emb[ids[1:]])
    assert torch.all(x[0, -(a + 1):-1] == 0)                                     # zeroed action slots
    torch.testing.assert_close(x[0, -1], emb[2])                                 # </s>


def test_action_head_reads_the_slice_shifted_one_to_the_left(tiny, tiny_inputs):
    _, _, _, prompt = tiny_inputs
    model = tiny.model
    layout = model.layout(prompt, 2)
    hidden = torch.arange(layout.seq_len, dtype=torch.float32).view(1, -1, 1)
    got = model.action_head_input(hidden).flatten().long().tolist()
    # OFT: NUM_PATCHES (2 x 256 + proprio) + NUM_PROMPT_TOKENS (prompt ids without BOS) is the
    # position of the last prompt token; the slice runs 56 positions from there.
    num_patches, num_prompt = 512 + 1, len(prompt.ids) - 1
    start = num_patches + num_prompt
    assert got == list(range(start, start + 56))
    assert got[-1] == layout.seq_len - 3 and got[0] == layout.seq_len - 58


def run(model, inputs, config=None, steps=2):
    """(actions, tokens_per_layer, pruner of the last step) after ``steps`` steps of ``config``'s rule."""
    frames, pixels, proprio, prompt = inputs
    if config is None:
        return (*model.predict(pixels, proprio, prompt), None)
    layout = model.layout(prompt, 2)
    strategy = make_strategy(config.pruning_settings(), layout, len(model.llm.layers), (3, 224, 224), "cpu")
    for step in range(steps):
        pruner = strategy.begin_step(frames, None, 0.1 * step, layout, Stopwatch(torch.device("cpu")))
        actions, tokens_per_layer = model.predict(pixels, proprio, prompt, pruner)
    return actions, tokens_per_layer, pruner


@torch.inference_mode()
def test_pruning_that_keeps_everything_equals_the_plain_forward(tiny, tiny_inputs):
    plain, tpl, _ = run(tiny.model, tiny_inputs)
    assert tpl == [tpl[0]] * 32
    keep_all = Config.from_dict({"pruning": {"k_global": 256, "k_local": 256, "k_dynamic": 0, "alpha": 1.0,
                                             "dynamic_drop_ratio": 0.0}})
    pruned, _, pruner = run(tiny.model, tiny_inputs, keep_all)
    assert pruner.vision_kept == 512 and pruner.selection is not None
    torch.testing.assert_close(pruned, plain, rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_pruned_forward_follows_the_schedule(tiny, tiny_inputs):
    cfg = Config()
    _, tpl, pruner = run(tiny.model, tiny_inputs, cfg)
    n, non_vision = tpl[0], tpl[0] - 512
    assert tpl[:2] == [n, n]                                            # layers 1-2 see everything
    assert tpl[2] == non_vision + pruner.vision_kept < n                # static pruning before layer 3
    for layer in range(4, 33):
        vis_before, vis_now = tpl[layer - 2] - non_vision, tpl[layer - 1] - non_vision
        if layer - 1 in cfg.pruning.dynamic_layers:                     # dropped after layers 5, 10, 15, 20
            assert vis_now == vis_before - int(0.2 * vis_before)
        else:
            assert vis_now == vis_before
    assert min(tpl) > non_vision                                        # non-vision tokens are never pruned
    assert 0.0 <= float(pruner.recall) <= 1.0


@torch.inference_mode()
def test_first_step_is_unpruned_but_records_the_prior(tiny, tiny_inputs):
    plain, _, _ = run(tiny.model, tiny_inputs)
    actions, _, pruner = run(tiny.model, tiny_inputs, Config(), steps=1)
    torch.testing.assert_close(actions, plain)
    assert pruner.selection is None and torch.isnan(pruner.recall) and pruner.reason == "no prior (first step)"
    prior = pruner.engine.prior
    assert prior is not None and prior.shape == (2, 2, 256)
    assert torch.isfinite(prior).all()          # nothing pruned: every token has a score


def test_layer_indices_beyond_the_model_are_rejected():
    cfg = Config.from_dict({"pruning.global_layers": [15, 40]})
    with pytest.raises(ValueError, match=r"pruning.global_layers = \[15, 40\]: the model has 32 layers"):
        check_layers(cfg.pruning, 32)
    check_layers(cfg.replace(**{"pruning.enabled": False}).pruning, 32)      # unpruned: no layer knob is read
    with pytest.raises(ValueError, match=r"pruning.fastv_layer = 32: the model has 32 layers"):
        check_layers(Config().replace(**{"pruning.method": "fastv", "pruning.fastv_layer": 32}).pruning, 32)
    check_layers(cfg.replace(**{"pruning.method": "fastv"}).pruning, 32)      # fastv reads none of the others


@torch.inference_mode()
def test_a_batch_predicts_what_each_sample_predicts_alone(tiny, tiny_inputs):
    """Training runs batches (predict_batch); the robot runs one sample (predict): same numbers."""
    from specprune_ros.model.prompt import encode_prompt
    _, pixels, proprio, prompt = tiny_inputs
    model = tiny.model
    other = encode_prompt(tiny.tokenizer, "put the blue ball in the bowl")
    same_length = other if len(other.ids) == len(prompt.ids) else prompt
    batch_pixels = torch.stack([pixels, pixels.flip(-1)])
    batch_proprio = torch.stack([proprio, -proprio])
    got = model.predict_batch(batch_pixels, batch_proprio, [prompt, same_length])
    for i, p in enumerate((prompt, same_length)):
        alone, _ = model.predict(batch_pixels[i], batch_proprio[i], p)
        torch.testing.assert_close(got[i], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], got[1])                 # the samples really differ
    with pytest.raises(ValueError, match="one token length"):
        longer = encode_prompt(tiny.tokenizer, "put the blue ball in the bowl next to the red cube please")
        model.predict_batch(batch_pixels, batch_proprio, [prompt, longer])
