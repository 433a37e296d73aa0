"""Pruning rules behind one interface (pruning/strategy.py), on the real tiny model.

SpecPrune's selections are checked against a fixture made by the code before the redesign
(fixtures/make_specprune_selections.py), so the redesign changed no decision.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from specprune_ros.common.methods import paper_config
from specprune_ros.config import Config
from specprune_ros.model.checkpoint import load_tiny_random
from specprune_ros.policy import Observation, SpecPrunePolicy
from specprune_ros.pruning.scores import score_layer
from specprune_ros.pruning.stopwatch import Stopwatch
from specprune_ros.pruning.strategy import make_strategy
from specprune_ros.synthetic import INSTRUCTION, episode

FIXTURES = Path(__file__).with_name("fixtures")
_spec = importlib.util.spec_from_file_location("make_specprune_selections", FIXTURES / "make_specprune_selections.py")
fixture_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_script)
# history_horizon 1: at 10 Hz with one executed action per step, the history rule the fixture was made with.
# The paper's rule: the fixture was made with it.
BASE = paper_config().replace(**{"pruning.dynamic_layers": [5, 10, 15, 20], "pruning.history_horizon": 1})


def float32_action_tolerance(model_config) -> float:
    """How far two CPUs' float32 kernels may put the same chunk apart (absolute, actions ~1).

    Each dot product of length n rounds with a relative error up to ~n * eps (eps = 2^-24
    per operation, 2^-23 for the unit in the last place), and the kernel's summation order
    (AVX2 vs AVX-512, BF16-capable or not, oneDNN vs the reference path) changes which error one
    gets; through the layers the errors add up like a random walk (sqrt(depth)). The longest
    reduction of the tiny model is the attention row over the whole sequence.
    """
    llm = model_config.llm
    towers = (model_config.featurizer.depth, model_config.fused_featurizer.depth)
    longest = max(llm.hidden, llm.intermediate, 1024)          # the sequence (~600 keys) or a projection
    depth = llm.layers + sum(towers)                            # LLM layers plus both vision towers
    return float(np.finfo(np.float32).eps) * longest * depth ** 0.5


@pytest.fixture(scope="module")
def loaded():
    return load_tiny_random("cpu")


def run(loaded, **knobs):
    config = BASE.replace(**knobs)
    return fixture_script.run_episode(config, SpecPrunePolicy(loaded, config))


def test_specprune_selects_exactly_what_it_did_before_the_redesign(loaded):
    before = np.load(FIXTURES / "specprune_selections.npz")
    now = run(loaded)
    assert np.array_equal(now["kept"], before["kept"])
    assert np.array_equal(now["tokens_per_layer"], before["tokens_per_layer"])
    # Selections are exact; actions only as close as float32 kernels on another CPU allow.
    np.testing.assert_allclose(now["actions"], before["actions"], rtol=0,
                               atol=float32_action_tolerance(loaded.model.config))
    assert {s.method for s in now["stats"]} == {"specprune"}


def test_random_keeps_specprunes_budget_with_other_tokens(loaded):
    got = run(loaded, **{"pruning.method": "random"})
    stats = got["stats"]
    pruned = [i for i, s in enumerate(stats) if s.fallback_reason == ""]
    assert len(pruned) >= 20 and {s.method for s in stats} == {"random"}
    for i in pruned:
        s = stats[i]
        # The union SpecPrune would keep is the budget: as many tokens, chosen at random.
        assert s.vision_tokens_kept == got["kept"][i].sum() >= max(s.global_selected, s.local_selected)
        assert np.isnan(s.global_recall)
        vis = got["tokens_per_layer"][i] - (got["tokens_per_layer"][i][0] - 512)
        for layer in (5, 10, 15, 20):                       # dynamic drops: SpecPrune's counts
            assert vis[layer] == vis[layer - 1] - int(0.2 * vis[layer - 1])
    specprune = np.load(FIXTURES / "specprune_selections.npz")["kept"]          # SpecPrune on the same frames
    overlap = [(got["kept"][i] & specprune[i]).sum() / got["kept"][i].sum() for i in pruned]
    assert np.mean(overlap) < 0.6                        # not SpecPrune's tokens (random: ~ kept share)
    again = run(loaded, **{"pruning.method": "random"})  # seeded at every episode start
    assert np.array_equal(again["kept"], got["kept"])


def step_inputs(loaded):
    """One synthetic step as the model takes it: frames, pixels, normalized proprio, prompt."""
    from specprune_ros.model.processing import ImageProcessor
    from specprune_ros.model.prompt import encode_prompt
    step = episode(3)[1]
    processor = ImageProcessor(224, True)
    frames = processor.frames([step.primary, step.wrist])
    proprio = torch.tensor(loaded.stats.normalize_proprio(step.proprio), dtype=torch.float32)
    return frames, processor.pixels(frames), proprio, encode_prompt(loaded.tokenizer, INSTRUCTION)


def full_sequence_scores(model, pixels, proprio, prompt, queries) -> dict[int, torch.Tensor]:
    """Layer (1-based) -> each vision token's mean attention from the scoring queries, computed
    layer by layer on the whole sequence, outside any pruner."""
    layout = model.layout(prompt, 2)
    x = model.embed(pixels, proprio, prompt)
    cos, sin = model.llm.rotary(x.shape[1], x.dtype)
    scores = {}
    for number, layer in enumerate(model.llm.layers, start=1):
        x, (q, k) = layer(x, cos, sin, layout.query_index(queries))
        scores[number] = score_layer(q[None], k[None], slice(layout.vision_start, layout.vision_end),
                                     None).scores[0]
    return scores


@pytest.mark.parametrize("queries", ["instruction", "action", "both"])
@torch.inference_mode()
def test_fastv_keeps_the_top_r_tokens_of_layer_k(loaded, queries):
    model = loaded.model
    frames, pixels, proprio, prompt = step_inputs(loaded)
    config = Config().replace(**{"pruning.method": "fastv", "pruning.fastv_layer": 3, "pruning.fastv_tokens": 100,
                                 "pruning.score_queries": queries})
    layout = model.layout(prompt, 2)
    # the action positions are exactly the hidden states the action head reads
    marked = torch.arange(layout.seq_len, dtype=torch.float32).view(1, -1, 1)
    assert model.action_head_input(marked).flatten().tolist() == list(layout.action_positions)
    strategy = make_strategy(config.pruning_settings(), layout, 32, (3, 224, 224), "cpu")
    pruner = strategy.begin_step(frames, None, 0.0, layout, Stopwatch(torch.device("cpu")))
    _, tokens_per_layer = model.predict(pixels, proprio, prompt, pruner)
    n = tokens_per_layer[0]
    assert tokens_per_layer == [n] * 3 + [n - 512 + 100] * 29          # pruned once, after layer 3

    # Independently: layer 3's attention from the scoring queries on the full sequence, top 100.
    scores = full_sequence_scores(model, pixels, proprio, prompt, queries)[3]
    expected = torch.zeros(512, dtype=torch.bool)
    expected[scores.topk(100).indices] = True
    assert torch.equal(pruner.selection.kept.reshape(-1), expected)
    assert pruner.recall is None and pruner.plan is None and not pruner.fallback


def test_the_method_is_a_live_knob(loaded):
    policy = SpecPrunePolicy(loaded, BASE)
    policy.set_config(BASE.replace(**{"pruning.method": "fastv", "pruning.fastv_tokens": 77}))
    got = fixture_script.run_episode(policy=policy)
    assert {s.method for s in got["stats"]} == {"fastv"}
    assert all(s.vision_tokens_kept == 77 for s in got["stats"])            # pruned from the first step
    policy.set_config(BASE.replace(**{"pruning.enabled": False}))
    got = fixture_script.run_episode(policy=policy)
    assert {s.method for s in got["stats"]} == {"none"} and all(s.vision_tokens_kept == 512 for s in got["stats"])


def test_coverage_keeps_every_block_at_the_static_stage_and_the_drop_counts(loaded):
    got = run(loaded, **{"pruning.coverage_grid": 4, "pruning.coverage_dynamic": True, "pruning.alpha": 0.2})
    pruned = [i for i, s in enumerate(got["stats"]) if s.fallback_reason == ""]
    assert pruned
    blocks = np.arange(256).reshape(16, 16)
    blocks = (blocks // 16 // 4) * 4 + (blocks % 16) // 4
    for i in pruned:
        for camera in range(2):
            kept_blocks = set(blocks.reshape(-1)[got["kept"][i][camera]])
            assert kept_blocks == set(range(16))                # no region of either image left dark
        vis = got["tokens_per_layer"][i] - (got["tokens_per_layer"][i][0] - 512)
        for layer in (5, 10, 15, 20):                            # the dynamic drops keep their counts
            assert vis[layer] == vis[layer - 1] - int(0.2 * vis[layer - 1])


@torch.inference_mode()
def test_the_attention_recorder_keeps_everything_and_records_each_asked_layer(loaded):
    from specprune_ros.pruning.strategy import AttentionRecorder, KeptSequence
    model = loaded.model
    _, pixels, proprio, prompt = step_inputs(loaded)
    layout = model.layout(prompt, 2)
    sequence = KeptSequence(layout, layout.query_index("instruction"), torch.device("cpu"))
    recorder = AttentionRecorder(sequence, Stopwatch(torch.device("cpu")), [1, 3, 32])
    actions, tokens_per_layer = model.predict(pixels, proprio, prompt, recorder)
    assert tokens_per_layer == [layout.seq_len] * 32 and sorted(recorder.maps) == [1, 3, 32]
    plain, _ = model.predict(pixels, proprio, prompt, None)
    assert torch.equal(actions, plain)                                    # recording changes nothing
    expected = full_sequence_scores(model, pixels, proprio, prompt, "instruction")
    for number, recorded in recorder.maps.items():
        assert torch.allclose(recorded, expected[number], rtol=1e-5, atol=1e-7), number
        assert 0 < float(recorded.sum()) <= 1 + 1e-6       # a share of the rows' mass: the rest is on text


def test_the_policys_attention_is_per_layer_and_camera_and_refuses_layers_it_lacks(loaded):
    policy = SpecPrunePolicy(loaded, Config())
    step = episode(3)[1]
    obs = Observation([step.primary, step.wrist], step.proprio, INSTRUCTION, stamp=0.0)
    maps = policy.attention(obs, [2, 16])
    assert maps.shape == (2, 2, 256) and (maps >= 0).all() and (maps.sum(axis=(1, 2)) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match=r"attention layers \[0, 33\]: the model has layers 1 .. 32"):
        policy.attention(obs, [0, 2, 33])
