"""The training loop with stand-in components: determinism, resume, failure handling."""

import signal

import chex
import jax
import numpy as np
import pytest
from train_fakes import FakeTask, fake_components, fake_init, fake_loss, tiny_config

from sleep_lm import run as run_lib
from sleep_lm.train import loop, optim
from sleep_lm.train.checkpoint import Checkpointer
from sleep_lm.train.metrics import read_metrics
from sleep_lm.train.state import TrainState


def _restore_params(workdir, config, components, step=None):
    optimizer = optim.make_optimizer(config.train)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=5)
    try:

        def create():
            return TrainState.create(components.init_params(jax.random.PRNGKey(0)), optimizer)

        return checkpointer.restore(jax.eval_shape(create), step)
    finally:
        checkpointer.close()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 uninterrupted steps: the reference for resumed runs."""
    workdir = tmp_path_factory.mktemp("straight")
    config = tiny_config()
    final_eval = loop.train(config, workdir, fake_components())
    return workdir, config, final_eval


def test_batches_depend_on_seed_and_step_only():
    task = FakeTask()
    a = loop.batch_for_step(task, 0, 5, 4)
    b = loop.batch_for_step(task, 0, 5, 4)
    c = loop.batch_for_step(task, 0, 6, 4)
    d = loop.batch_for_step(task, 1, 5, 4)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    assert not np.array_equal(a["inputs"], d["inputs"])


@pytest.mark.parametrize("hosts", [2, 4, 8])
def test_batch_of_a_step_does_not_depend_on_the_host_count(hosts):
    # Simulated hosts, each holding a contiguous slice of the global batch of 8 rows (what
    # parallel.host_rows gives on a data-parallel mesh), each sampling on its own.
    task, whole = FakeTask(), loop.batch_for_step(FakeTask(), 0, 5, 8)
    size = 8 // hosts
    parts = [
        loop.batch_for_step(task, 0, 5, 8, range(h * size, (h + 1) * size)) for h in range(hosts)
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    odd = loop.batch_for_step(task, 0, 5, 8, (6, 1))  # any row set: those rows of the batch
    np.testing.assert_array_equal(odd["inputs"], whole["inputs"][[6, 1]])


def test_training_batches_are_not_the_rule110_eval_set():
    # The eval set comes from default_rng([seed, 1]); training must not reuse that stream.
    from sleep_lm.tasks import get_task

    task = get_task({"name": "rule110", "steps": 0})
    held_out = {row.tobytes() for row in task.eval_batch(64, 0)["inputs"]}
    for step in range(4):
        batch = loop.batch_for_step(task, 0, step, 64)["inputs"]
        assert not held_out & {row.tobytes() for row in batch}, step


def test_straight_run_writes_metrics_and_checkpoints(straight_run):
    workdir, _, final_eval = straight_run
    records = read_metrics(workdir / "metrics.jsonl")
    train_lines = [r for r in records if "loss" in r]
    eval_lines = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in eval_lines] == [3, 6]
    for r in train_lines:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s", "token_accuracy"}
    assert set(final_eval) == {"eval/loss", "eval/token_accuracy", "eval/accuracy"}
    assert eval_lines[-1]["eval/loss"] == pytest.approx(final_eval["eval/loss"])
    # keep_checkpoints=2 of the saves at 2, 4, 6.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]
    # The lr column follows the warm-up: step index 0 trains at lr 0, index 2 at the peak.
    assert train_lines[0]["lr"] == 0.0
    assert train_lines[2]["lr"] == pytest.approx(tiny_config().train.lr)


def test_loss_decreases(tmp_path):
    config = tiny_config(steps=40, eval_every=40, checkpoint_every=40, log_every=10)
    loop.train(config, tmp_path, fake_components())
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.8 * losses[0], losses


def test_resume_with_more_steps_continues_from_checkpoint(tmp_path):
    config = tiny_config(steps=4)
    loop.train(config, tmp_path, fake_components())
    config.train.steps = 6
    loop.train(config, tmp_path, fake_components())
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    resumed = _restore_params(tmp_path, config, fake_components())
    assert int(resumed.step) == 6


def test_interrupted_run_resumes_exactly(tmp_path, straight_run):
    ref_dir, _, _ = straight_run
    config = tiny_config()
    # SIGTERM arrives while the loop samples the batch of step index 3 (call 0 is step 0's
    # batch), i.e. during the 3rd update; the loop finishes it and saves step 3.
    with pytest.raises(loop.Interrupted) as info:
        loop.train(config, tmp_path, fake_components(kill_call=3))
    assert info.value.signum == signal.SIGTERM
    assert info.value.step == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    loop.train(config, tmp_path, fake_components())

    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    reference = read_metrics(ref_dir / "metrics.jsonl")
    for mine, ref in zip(records, reference, strict=True):
        assert mine["step"] == ref["step"]
        for key in ("loss", "eval/loss", "grad_norm"):
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-6), (key, mine["step"])
    chex.assert_trees_all_close(
        _restore_params(tmp_path, config, fake_components(), 6).params,
        _restore_params(ref_dir, config, fake_components(), 6).params,
        rtol=1e-6,
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config()
    # Call k of sample() is the batch of step index k: the 4th update produces NaN.
    with pytest.raises(loop.NonFiniteLoss) as info:
        loop.train(config, tmp_path, fake_components(poison_call=3))
    assert info.value.step == 4
    assert info.value.last_checkpoint == 2
    assert "non-finite loss at step 4" in str(info.value)
    checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == [2]
    restored = _restore_params(tmp_path, config, fake_components())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def test_train_step_skips_non_finite_update():
    config = tiny_config()
    optimizer = optim.make_optimizer(config.train)
    state = TrainState.create(fake_components().init_params(jax.random.PRNGKey(0)), optimizer)
    batch = FakeTask(poison_call=0).sample(np.random.default_rng(0), 4)
    step = jax.jit(loop.make_train_step(fake_components().loss_fn, optimizer))
    new_state, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    chex.assert_trees_all_equal(new_state, state)


def test_already_done_is_a_no_op(tmp_path, straight_run):
    ref_dir, _, _ = straight_run
    config = tiny_config()
    before = (ref_dir / "metrics.jsonl").read_text()
    assert loop.train(config, ref_dir, fake_components()) == {}
    assert (ref_dir / "metrics.jsonl").read_text() == before


def test_evaluate_checkpoint_matches_final_eval(straight_run):
    workdir, config, final_eval = straight_run
    step, metrics = run_lib.evaluate_checkpoint(config, workdir, fake_components())
    assert step == 6
    for key, value in final_eval.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6)


def test_evaluate_checkpoint_of_a_missing_workdir_creates_nothing(tmp_path):
    workdir = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*typo/checkpoints"):
        run_lib.evaluate_checkpoint(tiny_config(), workdir, fake_components())
    assert not workdir.exists()  # orbax would have made an empty checkpoints/ directory


def _init_state(config, workdir):
    """init_or_restore for `workdir` (its checkpoints, else config.init, else the seed)."""
    components = fake_components()
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2)
    try:
        optimizer = optim.make_optimizer(config.train)
        state, _ = loop.init_or_restore(config, components, optimizer, checkpointer)
        return state
    finally:
        checkpointer.close()


def test_warm_start_takes_the_parameters_and_a_fresh_optimiser(straight_run, tmp_path):
    source, _, _ = straight_run  # checkpoints at steps 4 and 6
    config = tiny_config()
    config.init.from_checkpoint = f"{source}:4"
    state = _init_state(config, tmp_path / "warm")
    chex.assert_trees_all_equal(
        state.params, _restore_params(source, config, fake_components(), 4).params
    )
    assert int(state.step) == 0  # the schedule starts again
    fresh = TrainState.create(state.params, optim.make_optimizer(config.train)).opt_state
    chex.assert_trees_all_equal(state.opt_state, fresh)
    config.init.from_checkpoint = str(source)  # default: the latest checkpoint
    latest = _init_state(config, tmp_path / "warm_latest")
    chex.assert_trees_all_equal(
        latest.params, _restore_params(source, config, fake_components()).params
    )


def test_resuming_takes_precedence_over_init(straight_run, tmp_path):
    source, _, _ = straight_run
    config = tiny_config()
    config.init.from_checkpoint = "/nonexistent/run"  # not read: the workdir has checkpoints
    assert int(_init_state(config, source).step) == 6


def test_warm_start_errors_are_one_line(straight_run, tmp_path):
    source, _, _ = straight_run
    config = tiny_config()
    for value, message in [
        (str(tmp_path / "nothing"), "no checkpoint in .*nothing/checkpoints"),
        (f"{source}:5", r"no checkpoint of step 5 in .* \(steps: 4, 6\)"),
    ]:
        config.init.from_checkpoint = value
        with pytest.raises(
            loop.InitError, match=f"^config.init.from_checkpoint='{value}': {message}"
        ):
            _init_state(config, tmp_path / "w")


def _varied_loss_positions(batch: dict, counts) -> dict:
    """`batch` with `counts[row]` loss positions in each row (GSM answers have 2-5)."""
    rng = np.random.default_rng(1)
    for row, count in enumerate(counts):
        batch["loss_mask"][row] = False
        batch["loss_mask"][row, rng.choice(batch["loss_mask"].shape[1], count, False)] = True
    return batch


def test_evaluate_in_chunks_weights_by_loss_positions():
    """Chunked eval equals the whole set's metrics when the chunks hold different numbers
    of loss positions: loss and token accuracy weighted by loss positions, accuracy by
    examples. The old weighting (chunk means x examples) is off by > 5% here."""
    params = fake_init(jax.random.PRNGKey(0))
    # The first chunk holds 32 loss positions, the other two 7 together.
    counts = [8, 8, 8, 8, 1, 1, 1, 1, 1, 1, 1]
    batch = _varied_loss_positions(FakeTask().sample(np.random.default_rng(0), 11), counts)
    _, whole = fake_loss(params, batch)
    step = jax.jit(loop.make_eval_step(fake_loss))
    chunked = loop.evaluate(step, params, batch, chunk_size=4)  # 4 + 4 + 3
    # float32 sums in a different order: measured ~1e-7 relative; 1e-6.
    for name in ("loss", "token_accuracy", "accuracy"):
        assert chunked[f"eval/{name}"] == pytest.approx(float(whole[name]), rel=1e-6), name
    # Not vacuous: per-chunk means weighted by examples (the weighting before) differ.
    old = {}
    for start in range(0, 11, 4):
        chunk = {k: v[start : start + 4] for k, v in batch.items()}
        for key, value in fake_loss(params, chunk)[1].items():
            old[key] = old.get(key, 0.0) + float(value) * len(chunk["inputs"]) / 11
    for name in ("loss", "token_accuracy"):
        assert abs(old[name] - float(whole[name])) > 0.2 * float(whole[name]), name


def test_eval_sets_metrics_carry_the_set_suffix():
    """Evaluation by difficulty: each held-out set's metrics get its key as a suffix."""
    sets = {
        "": {"inputs": np.array([[1.0], [3.0]])},
        "@k=8": {"inputs": np.array([[10.0], [20.0], [30.0]])},
    }

    def eval_step(params, chunk):
        return {"eval/loss": (np.sum(chunk["inputs"]), len(chunk["inputs"]))}

    metrics = loop.evaluate_sets(eval_step, None, sets, chunk_size=2)
    assert metrics == {"eval/loss": pytest.approx(2.0), "eval/loss@k=8": pytest.approx(20.0)}


def test_eval_sets_default_to_the_task_eval_batch():
    sets = loop.eval_sets(FakeTask(), size=5, seed=3)
    assert list(sets) == [""]
    chex.assert_trees_all_equal(sets[""], FakeTask().eval_batch(5, 3))


def test_gradient_accumulation_equals_the_whole_batch():
    """microbatches = 4 gives the whole batch's loss, metrics, gradient and update, with a
    different number of loss positions in every row (slices weighted by their counts: an
    unweighted mean of the slices' means would be off by ~10% here)."""
    config = tiny_config()
    optimizer = optim.make_optimizer(config.train)
    params = fake_components().init_params(jax.random.PRNGKey(0))
    batch = FakeTask().sample(np.random.default_rng(0), 8)
    batch = _varied_loss_positions(batch, [1, 6, 2, 8, 1, 3, 7, 5])
    whole = jax.value_and_grad(fake_loss, has_aux=True)(params, batch)
    parts = jax.jit(loop.accumulated_value_and_grad, static_argnums=(0, 3))(
        fake_loss, params, batch, 4
    )
    # float32 summation order differs (measured 0.14 of rtol 1e-5 / atol 1e-6), against
    # gradients of scale ~0.1; the unweighted mean below is off by 1e-2 relative.
    chex.assert_trees_all_close(parts, whole, rtol=1e-4, atol=1e-5)
    # The unweighted mean of the 4 slices' losses is a different number (the test can fail).
    micro = loop.split_microbatches(batch, 4)
    slices = [jax.tree.map(lambda x, j=j: x[j], micro) for j in range(4)]
    naive = np.mean([fake_loss(params, part)[0] for part in slices])
    assert abs(naive - float(whole[0][0])) > 1e-2 * float(whole[0][0])

    state = TrainState.create(params, optimizer)
    one = jax.jit(loop.make_train_step(fake_loss, optimizer))(state, batch)
    four = jax.jit(loop.make_train_step(fake_loss, optimizer, microbatches=4))(state, batch)
    chex.assert_trees_all_close(four, one, rtol=1e-4, atol=1e-5)


def test_xla_options_reach_the_steps_compile(tmp_path):
    """train.xla_options: an option of this platform's compiler reaches the steps' compile
    (an unknown one fails it), one named for another platform's compiler is left out."""
    text = "xla_gpu_a=15, xla_tpu_b=true, xla_c=0.5, xla_d=false"
    assert loop.compiler_options(text, "cuda") == {"xla_gpu_a": 15, "xla_c": 0.5, "xla_d": False}
    assert loop.compiler_options(text, "tpu") == {"xla_tpu_b": True, "xla_c": 0.5, "xla_d": False}
    assert loop.compiler_options("xla_gpu_a=15", "cpu") is None
    config = tiny_config(steps=1, eval_every=1, checkpoint_every=1)
    config.train.xla_options = "xla_cpu_no_such_option=1"
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        loop.train(config, tmp_path / "cpu", fake_components())
    config.train.xla_options = "xla_gpu_no_such_option=1,xla_cpu_enable_fast_math=false"
    assert loop.train(config, tmp_path / "gpu", fake_components())


def test_trainer_with_microbatches_follows_the_straight_run(straight_run, tmp_path):
    ref_dir, _, _ = straight_run
    loop.train(tiny_config(microbatches=4), tmp_path, fake_components())
    ref = [r for r in read_metrics(ref_dir / "metrics.jsonl") if "loss" in r]
    got = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-4)
