"""Training the small OpenVLA-OFT model on demonstrations: the loss falls, a run resumes, and the
result loads through the released-layout loader and acts in the environment."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.config import Config  # noqa: E402
from specprune_ros.model.checkpoint import load_checkpoint  # noqa: E402
from specprune_ros.observation import Observation  # noqa: E402
from specprune_ros.policy import SpecPrunePolicy  # noqa: E402
from specprune_ros.sim.collect import DemoError, collect  # noqa: E402
from specprune_ros.sim.env import TabletopEnv, seed_range  # noqa: E402
from specprune_ros.sim.scene import OBJECTS  # noqa: E402
from specprune_ros.sim.train import (  # noqa: E402
    PARAMS_FILE,
    STATE_FILE,
    TrainConfig,
    Trainer,
    action_chunks,
    export,
    normalize_actions,
)

FAST = TrainConfig(steps=8, batch=3, lr=1e-3, warmup=1, checkpoint_every=4)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    collect(out, 2, "validation")
    return out


def test_a_short_run_lowers_the_loss_and_writes_a_loadable_model(demos, tmp_path):
    trainer = Trainer(demos, tmp_path / "run", FAST)
    summary = trainer.train()
    assert np.mean(trainer.losses[-3:]) < np.mean(trainer.losses[:3])
    for name in ("train.json", "loss.png", STATE_FILE):
        assert (tmp_path / "run" / name).is_file()
    loaded = load_checkpoint(summary["model"], device="cpu")
    assert loaded.model.config.center_crop is False and loaded.stats.key == "sim_tabletop"
    # Exported from the run directory alone (as while a run trains): the same weights and statistics.
    exported = load_checkpoint(export(tmp_path / "run", tmp_path / "exported"), device="cpu")
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), exported.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert exported.stats.action_high.tolist() == loaded.stats.action_high.tolist()
    # Recomputed from the demonstrations (runs without their own statistics): the same numbers.
    recomputed = load_checkpoint(export(tmp_path / "run", tmp_path / "recomputed", demos), device="cpu")
    assert recomputed.stats.action_high.tolist() == loaded.stats.action_high.tolist()
    # The model's depth is not the release's: it ships the layer knobs that fit it.
    config = Config.from_yaml(Path(summary["model"]) / PARAMS_FILE)
    assert config.pruning.enabled and max(config.pruning.global_layers) == loaded.model.config.llm.layers

    env = TabletopEnv()                                  # the trained model acts in the environment
    obs, info = env.reset(seed=seed_range("test")[0])
    policy = SpecPrunePolicy(loaded, config)
    for step in range(3):
        out = policy.step(Observation([obs["primary"], obs["wrist"]], obs["proprio"], info["instruction"],
                                      stamp=0.1 * step))
        assert out.actions.shape == (8, 7) and np.all(np.isfinite(out.actions))
        obs, _, _, _, info = env.step(out.actions[0])
    env.close()


def test_an_interrupted_run_resumes_where_it_stopped(demos, tmp_path):
    first = Trainer(demos, tmp_path / "run", FAST)
    assert first.train(until=4)["interrupted"]                       # stopped after the step-4 checkpoint
    resumed = Trainer(demos, tmp_path / "run", FAST)
    assert resumed.resume() and resumed.step == 4 and len(resumed.losses) == 4
    resumed.train()
    straight = Trainer(demos, tmp_path / "straight", FAST)
    straight.train()
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-4)   # the same batches, the same run


def test_a_warm_start_takes_the_weights_not_the_optimizer_or_the_step(demos, tmp_path):
    donor = Trainer(demos, tmp_path / "donor", FAST)
    donor.train(until=4)
    warm = Trainer(demos, tmp_path / "warm", FAST, init=tmp_path / "donor" / STATE_FILE)
    assert not warm.resume() and warm.step == 0 and not warm.optimizer.state
    for (name, a), (_, b) in zip(donor.model.state_dict().items(), warm.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert warm.train()["init"] == str(tmp_path / "donor" / STATE_FILE)
    # Once the warm run has its own state, it resumes from that, not from the donor.
    again = Trainer(demos, tmp_path / "warm", FAST, init=tmp_path / "donor" / STATE_FILE)
    assert again.resume() and again.step == FAST.steps
    with pytest.raises(DemoError, match="no training state to start from"):
        Trainer(demos, tmp_path / "cold", FAST, init=tmp_path / "missing.pt").resume()


def test_the_exported_model_is_the_moving_average_of_the_weights_and_a_resume_keeps_it(demos, tmp_path):
    config = replace(FAST, ema=0.5, keep_every=3)
    seen: list[dict[str, torch.Tensor]] = []
    run = Trainer(demos, tmp_path / "run", config,
                  progress=lambda *_: seen.append({k: v.detach().clone() for k, v in run.model.state_dict().items()}))
    run.train()
    expected = dict(seen[0])                                        # the first update copies the weights
    for weights in seen[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * weights[k] for k in expected}
    # The checkpoint stores bfloat16, as the released one does: the average to bfloat16's rounding.
    name = max((k for k in expected if expected[k].is_floating_point()),
               key=lambda k: float((expected[k] - seen[-1][k]).abs().max() / expected[k].abs().max()))
    torch.testing.assert_close(run.exported_model().state_dict()[name], expected[name])
    bf16 = expected[name].to(torch.bfloat16).float()
    for model in (export(tmp_path / "run", tmp_path / "model"), run.out / "model"):
        loaded = load_checkpoint(model, device="cpu", dtype="float32").model.state_dict()[name]
        torch.testing.assert_close(loaded, bf16, rtol=2 ** -8, atol=1e-7)
        assert (loaded - expected[name]).norm() < (loaded - seen[-1][name]).norm()   # the average, not the last step
    kept = load_checkpoint(run.out / "checkpoints" / "step-6", device="cpu", dtype="float32").model.state_dict()
    assert sorted(d.name for d in (run.out / "checkpoints").iterdir()) == ["step-3", "step-6"]   # step 8 is model/
    assert (kept[name] - seen[5][name]).norm() < (kept[name] - seen[-1][name]).norm()
    # An interrupted run resumes its average: the same exported weights as the straight run.
    first = Trainer(demos, tmp_path / "parts", config)
    first.train(until=4)
    resumed = Trainer(demos, tmp_path / "parts", config)
    assert resumed.resume()
    resumed.train()
    torch.testing.assert_close(resumed.exported_model().state_dict()[name], expected[name], rtol=1e-4, atol=1e-6)
    # A warm start from the run begins with the model it exported, not its last step's weights.
    warm = Trainer(demos, tmp_path / "warm", FAST, init=run.out / STATE_FILE)
    assert not warm.resume()
    torch.testing.assert_close(warm.model.state_dict()[name], expected[name])
    with pytest.raises(ValueError, match="ema = 1.0"):
        replace(FAST, ema=1.0)


def test_dagger_rounds_are_driven_by_the_model_labeled_by_the_expert_and_train_with_the_demonstrations(
        demos, tmp_path):
    from specprune_ros.sim.collect import read_index
    from specprune_ros.sim.expert import EXPERT_SEED_OFFSET, ScriptedExpert

    seed = seed_range("validation")[5]
    index = collect(tmp_path / "dagger", 1, "validation", start=5, policy="tiny-random")
    entry = index["episodes"][0]
    assert index["driver"] == "tiny-random" and entry["seed"] == seed
    assert not entry["success"] and read_index(tmp_path / "dagger")["episodes"] == [entry]   # a failure is kept
    with np.load(tmp_path / "dagger" / entry["file"]) as episode:
        actions, proprio = episode["actions"], episode["proprio"]
    env = TabletopEnv()
    obs, _ = env.reset(seed=seed)
    assert np.array_equal(proprio[0], obs["proprio"])
    # Row 0 is the noise-free expert's action at the reset state; its actions are the expert's kind.
    np.testing.assert_allclose(actions[0], ScriptedExpert(env, seed=seed + EXPERT_SEED_OFFSET, noise=0.0).act())
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0} and np.all(actions[:, 3:5] == 0)
    # The model drove: the states leave the expert's own path (the random model does not follow its labels).
    for action in actions[:8]:
        obs, *_ = env.step(action)
    assert not np.allclose(obs["proprio"][:3], proprio[8][:3], atol=1e-3)
    env.close()

    trainer = Trainer([demos, tmp_path / "dagger"], tmp_path / "run", FAST)
    assert len(trainer.episodes) == len(read_index(demos)["episodes"]) + 1
    with pytest.raises(DemoError, match="driven by tiny-random, asked for expert"):
        collect(tmp_path / "dagger", 2, "validation")


def test_the_auxiliary_questions_name_an_object_of_the_scene_and_want_its_place(demos, tmp_path):
    from specprune_ros.sim.scene import OBJECTS
    from specprune_ros.sim.train import AUX_CENTER, AUX_SCALE

    trainer = Trainer(demos, tmp_path / "run", FAST)
    samples = np.arange(0, trainer.samples, 7)
    texts, wanted = trainer.aux_queries(3, samples, torch.as_tensor(samples))
    asked = set()
    for sample, text, answer in zip(samples, texts, wanted.numpy()):
        episode = trainer.episodes[trainer.sample_episode[sample]]
        _, _, color, shape, _, _, receptacle = text.split()
        k = list(OBJECTS).index(shape)
        assert episode["colors"][k] == color                       # the scene's own colour for that shape
        first = np.flatnonzero(trainer.sample_episode == trainer.sample_episode[sample])[0]
        places = episode["privileged"][sample - first]
        r = 4 + ("plate", "bowl").index(receptacle)
        np.testing.assert_allclose(answer * AUX_SCALE + np.tile(AUX_CENTER, 2),
                                   [*places[2 * k:2 * k + 2], *places[2 * r:2 * r + 2]], atol=1e-6)
        asked.add(shape)
    assert len(asked) > 1                                           # not only the demonstrated target
    again, _ = trainer.aux_queries(3, samples, torch.as_tensor(samples))
    assert again == texts                                           # seeded by the step (resumable)
    # Demonstrations made before the privileged state was recorded: one clear error, or --aux-weight 0.
    old = tmp_path / "old_demos"
    old.mkdir()
    (old / "index.json").write_text((demos / "index.json").read_text())
    for path in demos.glob("episode_*.npz"):
        with np.load(path) as data:
            kept = {k: data[k] for k in data.files if k not in ("privileged", "colors")}
            np.savez_compressed(old / path.name, **kept)
    with pytest.raises(DemoError, match="no privileged state"):
        Trainer(old, tmp_path / "old_run", FAST)
    assert Trainer(old, tmp_path / "plain", replace(FAST, aux_weight=0.0)).aux_places is None


def test_the_sim_tokenizer_reads_each_instruction_word_as_one_token():
    from specprune_ros.model.prompt import build_tiny_tokenizer, encode_prompt
    from specprune_ros.sim.env import all_instructions
    from specprune_ros.sim.train import sim_tokenizer

    tokenizer, instructions = sim_tokenizer(), all_instructions()
    assert len(instructions) == 32
    lengths = {len(encode_prompt(tokenizer, text).instruction_positions) for text in instructions}
    assert lengths == {7}                                   # "put the red cube on the plate": 7 words, 7 tokens
    plain = build_tiny_tokenizer()                           # the tiny checkpoints' tokenizer is unchanged
    assert len({len(encode_prompt(plain, text).ids) for text in instructions}) > 1


def test_a_broken_training_state_is_one_clear_error(demos, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_FILE).write_bytes(b"interrupted")
    with pytest.raises(DemoError, match="cannot resume from this training state"):
        Trainer(demos, tmp_path / "run", FAST).resume()


def test_normalization_and_chunks():
    from specprune_ros.model.processing import NormStats
    stats = NormStats(np.array([-0.02] * 6 + [0.0]), np.array([0.02] * 6 + [1.0]), np.array([True] * 6 + [False]),
                      None, None)
    a = np.array([[0.01, -0.02, 0.0, 0.0, 0.03, 0.0, -1.0]])
    n = normalize_actions(a, stats)
    np.testing.assert_allclose(n[0, :6], [0.5, -1, 0, 0, 1, 0], atol=1e-6)       # clipped at the bounds
    assert n[0, 6] == -1.0                                                       # the gripper passes through
    np.testing.assert_allclose(stats.unnormalize_actions(n)[0, :4], a[0, :4], atol=1e-9)
    unused = np.array([False] * 3 + [True, True, False, False])          # the reference zeroes min == max dims
    np.testing.assert_array_equal(normalize_actions(a, stats, unused)[0], np.where(unused, 0.0, n[0]))
    actions = np.arange(10)[:, None].repeat(7, 1)
    chunks = action_chunks(actions, 8)
    assert chunks.shape == (10, 8, 7) and chunks[7, :, 0].tolist() == [7, 8, 9, 9, 9, 9, 9, 9]
    assert chunks[0, :, 0].tolist() == list(range(8))


def test_a_model_trained_for_two_cameras_refuses_one(tmp_path):
    from specprune_ros.config import ConfigError
    from specprune_ros.model.checkpoint import random_model, write_checkpoint
    from specprune_ros.model.prompt import build_tiny_tokenizer
    from specprune_ros.sim.train import sim_model_config
    cfg = sim_model_config()
    assert cfg.num_images == 2
    path = write_checkpoint(random_model(cfg), {"sim_tabletop": {
        "action": {"q01": [-1.0] * 6 + [0.0], "q99": [1.0] * 6 + [1.0], "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8}}}, build_tiny_tokenizer(), tmp_path / "model")
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.model.config.num_images == 2
    with pytest.raises(ConfigError, match=r"num_images = 1: the model .* was trained with 2 camera\(s\)"):
        SpecPrunePolicy(loaded, Config().replace(num_images=1, **{"pruning.enabled": False}))


def test_the_grounding_losses_train_on_the_demonstrations_patch_labels(demos, tmp_path):
    trainer = Trainer(demos, tmp_path / "run", replace(FAST, aux_weight=0.0, grounding_weight=1.0))
    trainer.train()
    assert len(trainer.grounding_losses) == FAST.steps and np.all(np.isfinite(trainer.grounding_losses))
    assert np.mean(trainer.grounding_losses[-3:]) < np.mean(trainer.grounding_losses[:3])
    resumed = Trainer(demos, tmp_path / "run", replace(FAST, aux_weight=0.0, grounding_weight=1.0))
    assert resumed.resume() and resumed.grounding_losses == pytest.approx(trainer.grounding_losses)
    assert torch.equal(resumed.named_head.weight, trainer.named_head.weight)   # the heads resume too


def test_demonstrations_without_patch_labels_refuse_the_grounding_losses(demos, tmp_path):
    import json
    import shutil
    old = tmp_path / "old"
    shutil.copytree(demos, old)
    for entry in json.loads((old / "index.json").read_text())["episodes"]:
        with np.load(old / entry["file"]) as data:
            arrays = {k: data[k] for k in data.files if k != "patch_labels"}
        np.savez_compressed(old / entry["file"], **arrays)
    with pytest.raises(DemoError, match="no patch labels .* --grounding-weight 0"):
        Trainer(old, tmp_path / "run", replace(FAST, grounding_weight=1.0))


def test_the_own_auxiliary_question_wants_the_place_of_what_the_instruction_names(demos, tmp_path):
    from specprune_ros.sim.train import AUX_CENTER, AUX_SCALE
    trainer = Trainer(demos, tmp_path / "run", replace(FAST, aux_questions="own"))
    samples = np.arange(0, trainer.samples, 5)
    wanted = trainer.own_aux_targets(torch.as_tensor(samples)).numpy()
    for sample, answer in zip(samples, wanted):
        episode = trainer.episodes[trainer.sample_episode[sample]]
        _, _, _, shape, _, _, receptacle = episode["instruction"].split()
        k, r = list(OBJECTS).index(shape), 4 + ("plate", "bowl").index(receptacle)
        first = np.flatnonzero(trainer.sample_episode == trainer.sample_episode[sample])[0]
        places = episode["privileged"][sample - first]
        np.testing.assert_allclose(answer * AUX_SCALE + np.tile(AUX_CENTER, 2),
                                   [*places[2 * k:2 * k + 2], *places[2 * r:2 * r + 2]], atol=1e-6)
    trainer.train()
    assert len(trainer.aux_losses) == FAST.steps and np.all(np.isfinite(trainer.aux_losses))


@torch.inference_mode()
def test_a_middle_grounding_layer_marks_patches_below_the_top_and_leaves_the_forward_alone(demos, tmp_path):
    trainer = Trainer(demos, tmp_path / "run", replace(FAST, aux_weight=0.0, grounding_weight=1.0,
                                                       grounding_layer=3))
    embedded = torch.randn(1, 40, trainer.cfg.llm.hidden)
    hidden, middle = trainer.forward_llm(embedded)
    expected, _ = trainer.model.forward_llm(embedded)
    torch.testing.assert_close(hidden, expected)                              # the action forward as it was
    x = embedded
    cos, sin = trainer.model.llm.rotary(x.shape[1], x.dtype)
    for block in trainer.model.llm.layers[:3]:
        x, _ = block(x, cos, sin, None)
    torch.testing.assert_close(middle, x)                                     # layer 3's output, un-normed
    for bad, message in ((dict(grounding_layer=17), "grounding_layer = 17: 0 .the last. or a layer 1 .. 16"),
                         (dict(aux_questions="mine"), "aux_questions = 'mine': one of random, own")):
        with pytest.raises(ValueError, match=message):
            replace(FAST, **bad)
