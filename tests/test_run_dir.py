"""Run directories a training run must not damage: engine.run_dir.check_run_dir, and checkpoints that
cannot be read or do not fit (engine.checkpoint.CheckpointError), refused in one line before anything is
written (no DeepSpeed run needed: the checks come before the engine)."""

import pytest
import torch

from megastride.engine import checkpoint as ckpt
from megastride.engine.config import dump_config, load_config
from megastride.engine.inference import load_run
from megastride.engine.model import SparseTransformer
from megastride.engine.run_dir import check_run_dir, resume_mismatch, weights_mismatch
from megastride.launch.train import main as train_main


def fake_run(root, cfg, step=4):
    """What training leaves in a run folder: its config, git revision, metrics and one checkpoint of
    ``cfg``'s model in DeepSpeed's layout (mp_rank_00_model_states.pt holding {"module": weights})."""
    tag = ckpt.tag_for(step)
    (root / "checkpoints" / tag).mkdir(parents=True)
    (root / "checkpoints" / "latest").write_text(tag)
    torch.manual_seed(0)
    torch.save({"module": SparseTransformer(cfg.model).state_dict()},
               root / "checkpoints" / tag / "mp_rank_00_model_states.pt")
    (root / "config.yaml").write_text(dump_config(cfg))
    (root / "git_revision.txt").write_text("abc\n")
    (root / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\n')
    return root


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_or_empty_folder_or_a_resumable_run_is_fine(tiny_config, tmp_path):
    cfg = load_config(tiny_config())
    check_run_dir(cfg)  # does not exist yet
    (tmp_path / "run").mkdir()
    check_run_dir(cfg)  # empty
    fake_run(tmp_path / "run", cfg, step=2)
    check_run_dir(cfg)  # the same model, steps left to train: resume
    dropout = load_config(tiny_config(model={"seq_len": 128, "d_model": 32, "n_layers": 2, "n_heads": 2,
                                             "dropout": 0.3, "attention": {"block": 32,
                                                                           "layers": ["fixed(32,8)", "strided(32)"]}}))
    assert weights_mismatch(cfg, dropout) is None  # settings that leave the weights as they are may change
    check_run_dir(dropout)


@pytest.mark.parametrize("case, message", [
    ("other model", "holds a checkpoint \\(step00000004\\) of another model: model.d_model was 32, now 64"),
    ("resume never", "already holds a run \\(checkpoint step00000004\\) and run.resume is never"),
    ("user folder", "is a folder of other files, not a megastride run"),
    ("a file", "is a file, not a folder"),
    ("under a file", "run.txt is a file, not a folder"),
])
def test_train_refuses_a_run_dir_it_would_damage_and_leaves_it_as_it_was(case, message, tiny_config, tmp_path,
                                                                          capsys):
    """`megastride train` on a run of another model, a finished run with run.resume=never, a folder of the
    user's own files, or a path through a file: one line, exit 2, and every file there as it was."""
    cfg = load_config(tiny_config())
    run = tmp_path / "run"
    overrides = []
    if case in ("other model", "resume never"):
        fake_run(run, cfg)
        overrides = ["--set", "model.d_model=64"] if case == "other model" else ["--set", "run.resume=never"]
    elif case == "user folder":
        run.mkdir()
        (run / "notes.txt").write_text("mine")
        (run / "config.yaml").write_text("my own config\n")
    elif case == "a file":
        run.write_text("a file")
    else:
        (tmp_path / "run.txt").write_text("a file")
        overrides = ["--set", f"run.dir={tmp_path / 'run.txt' / 'run'}"]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train_main([str(tiny_config()), *overrides])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastride train: error: run.dir ") and "\n" not in err, err
    assert __import__("re").search(message, err), err
    assert snapshot(tmp_path) == before


def test_a_damaged_or_mismatched_checkpoint_is_one_line_for_eval(tiny_config, tmp_path):
    """eval/sample load the newest checkpoint: a truncated one and one that does not fit config.yaml's model
    raise CheckpointError (one line through launch.errors) naming the file or the mismatch."""
    cfg = load_config(tiny_config())
    run = fake_run(tmp_path / "run", cfg)
    load_run(run)  # as written: loads
    states = run / "checkpoints" / ckpt.tag_for(4) / "mp_rank_00_model_states.pt"
    good = states.read_bytes()
    states.write_bytes(good[: len(good) // 2])
    with pytest.raises(ckpt.CheckpointError, match="mp_rank_00_model_states.pt cannot be read"):
        load_run(run)
    states.write_bytes(good)
    other = load_config(tiny_config(model={"seq_len": 128, "d_model": 64, "n_layers": 2, "n_heads": 2,
                                           "attention": {"block": 32, "layers": ["fixed(32,8)", "strided(32)"]}}))
    (run / "config.yaml").write_text(dump_config(other))
    with pytest.raises(ckpt.CheckpointError, match="does not fit the model of its config.yaml \\(size mismatch"):
        load_run(run)


def test_weights_mismatch_names_the_first_model_key_that_differs(tiny_config):
    cfg = load_config(tiny_config())
    deeper = cfg.model_copy(update={"model": cfg.model.model_copy(update={"n_layers": 3})})
    assert weights_mismatch(cfg, deeper) == "model.n_layers was 2, now 3"
    assert weights_mismatch(cfg, cfg) is None


def test_resume_mismatch_names_what_a_checkpoint_fixes_and_lets_the_rest_change(tiny_config):
    """resume_mismatch: the seed, the splits, the optimizer's settings, the precision, the ZeRO layout and what the
    model computes are fixed by a checkpoint; steps, cadence, batch, dropout, data.path and ZeRO 1 <-> 2 are not."""
    cfg = load_config(tiny_config(train={"zero_stage": 1}))

    def changed(**sections):
        return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})

    free = changed(train={"steps": 99, "log_every": 3, "eval_every": 5, "save_every": 7, "micro_batch_size": 1,
                          "grad_accum": 2, "warmup_steps": 3, "zero_stage": 2},
                   model={"dropout": 0.2, "loss_chunk": 64}, data={"path": "elsewhere.zarr"})
    assert resume_mismatch(cfg, free) is None
    assert resume_mismatch(cfg, changed(run={"seed": 7})) == (
        "run.seed=1; this config has run.seed=7 (the data order and random streams go on from it)")
    assert resume_mismatch(cfg, changed(train={"betas": (0.9, 0.99)})).startswith(
        "train.betas=[0.9, 0.95]; this config has train.betas=[0.9, 0.99] (the checkpoint's optimizer state")
    assert resume_mismatch(cfg, changed(train={"zero_stage": 3})).startswith("train.zero_stage=1; this config has "
                                                                             "train.zero_stage=3")
    attention = cfg.model.attention.model_copy(update={"layers": ("strided(32)",)})
    assert resume_mismatch(cfg, changed(model={"attention": attention})).startswith(
        "model.attention.layers=[fixed(32,8), strided(32)]; this config has model.attention.layers=[strided(32)]")


def test_a_store_whose_split_cannot_be_opened_is_named_before_the_run_starts(tiny_config, text_store, tmp_path,
                                                                              capsys):
    """A split whose array metadata is cut off is a one-line error at the start (check_data opens both
    splits' arrays), not a traceback at the first batch; no run folder is made."""
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(text_store, broken)
    meta = broken / "train" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:10])
    with pytest.raises(SystemExit) as exit_:
        train_main([str(tiny_config()), "--set", f"data.path={broken}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"megastride train: error: {broken}: cannot open array 'train'") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_an_image_store_of_another_shape_is_named_before_the_run_starts(tiny_config, tmp_path, capsys):
    """32x32x3 images under a model whose image_shape is 16x64x3 (the same 3,072 bytes) trained silently with
    every row and column position wrong; now a one-line error naming both shapes, and no run folder."""
    import numpy as np

    from megastride.data_shards import write_image_store

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    store = write_image_store([str(tmp_path / "x.npy")], tmp_path / "i.zarr", valid_fraction=0.25, progress=False)
    image = ["--set", f"data.path={store}", "--set", "model.embedding.kind=image", "--set", "model.seq_len=3072",
             "--set", "model.attention.block=64", "--set", 'model.attention.layers=["strided(64)"]']
    with pytest.raises(SystemExit) as exit_:
        train_main([str(tiny_config()), *image, "--set", "model.embedding.image_shape=[16,64,3]"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"megastride train: error: data store {store} holds 32x32x3 images but "
                   "model.embedding.image_shape is 16x64x3: set it to [32, 32, 3]"), err
    assert not (tmp_path / "run").exists()
