"""Sweep job directories stay short whatever the overrides (issue 16, item 2)."""

from __future__ import annotations

from mixerzoo.training.config import job_dir_name
from tests.conftest import CONFIG_DIR

LONG = ",".join(f"model.mixer=mamba_mixer,batch_size={i},optim.lr=0.00{i},model.block.mlp.ratio={i}" for i in range(9))


def test_short_override_lists_keep_their_readable_name() -> None:
    assert job_dir_name("model.mixer=pooling,seed=1") == "model.mixer=pooling,seed=1"


def test_long_override_lists_get_a_bounded_distinct_name() -> None:
    name = job_dir_name(LONG)
    assert len(LONG) > 255 and len(name) == 80 and name.startswith(LONG[:40])
    assert job_dir_name(LONG) == name and job_dir_name(LONG + "x") != name
    assert "/" not in job_dir_name("data.root=/data/imagenet," + LONG)


def test_train_yaml_names_sweep_jobs_with_it() -> None:
    assert "${job_dir_name:${hydra.job.override_dirname}}" in (CONFIG_DIR / "train.yaml").read_text()
