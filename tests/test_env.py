"""Paths and environment: every output path checked before work, LONGLIVE_WEIGHTS that is not a folder rejected, the
manifest's library versions and dirty flag, `longlive --version`."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

import longlive.cli as cli
import longlive.infer.assemble as assemble
import longlive.infer.fidelity as fidelity
import longlive.infer.latents as latents
import longlive.model.dit as dit
import longlive.runner.executor as executor
import longlive.train.lora as lora
import longlive.train.tiny as tiny
import longlive.train.trainer as trainer
from longlive.measure.manifest import KEY_PACKAGES, git_state, manifest, version_line
from longlive.model.presets import get_preset
from longlive.output import check_out_dir, check_out_file
from longlive.weights import SHIPPED_TINY, default_paths, tiny_dir, weights_root

REPO = Path(__file__).resolve().parents[1]


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any generation, decode, sweep, training or merge fails the test: the path check must come first."""
    def boom(*a, **k):
        raise AssertionError("work started before the output path was checked")

    for mod, name in [(cli, "make_video"), (cli, "run_sweep"), (cli, "train_tiny"), (cli, "decode_latents"),
                      (cli, "read_latents"), (assemble, "build"), (fidelity, "make_video"), (latents, "decode_latents"),
                      (executor, "run_sweep"), (dit, "build_model"), (trainer, "build_data"), (tiny, "train_tiny"),
                      (lora, "merge_lora_into_checkpoint")]:
        monkeypatch.setattr(mod, name, boom)


def _commands(out: Path, out_file: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that writes, with its output flag at `out` (folders) or `out_file` (files)."""
    return [
        ["generate", "--model", "tiny", "--frames", "4", "--out", str(out)],
        ["decode", str(tmp_path / "latents.safetensors"), "--out", str(out)],
        ["fidelity", "--model", "tiny", "--frames", "4", "--precision", "nvfp4", "--out", str(out)],
        ["sweep", "frames=4", "--results", str(out)],
        ["report", str(tmp_path), "--out", str(out)],
        ["train", "--model", "tiny", "--train-steps", "1", "--out", str(out)],
        ["train", "--model", "tiny", "--tiny-default", "--out", str(out)],
        ["dmd", "--model", "tiny", "--out", str(out)],
        ["lora", "merge", "--base", "b.pt", "--lora", "l.pt", "--out", str(out_file)],
        ["report", "convert-bench", str(tmp_path), "--out", str(out_file.with_suffix(".jsonl"))],
    ]


def test_every_output_path_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    folder = tmp_path / "a-folder.jsonl"  # a folder where a file is expected (suffix kept for convert-bench)
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    # root may write anywhere: judge access by the mode bits, as for any other user
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: real_access(p, m, **k) and (
        not m & os.W_OK or bool(os.stat(p).st_mode & stat.S_IWUSR)))
    cases = [  # (folder outputs, file outputs, message)
        (blocker, folder, None),
        (blocker / "sub", blocker / "sub" / "x.pt", f"{blocker} is a file"),
        (locked / "out", locked / "out" / "x.pt", f"{locked} is not writable"),
    ]
    for out, out_file, expected in cases:
        for argv in _commands(out, out_file, tmp_path):
            assert cli.main(argv) == 2, argv
            err = capsys.readouterr().err
            if expected is None:  # the first case: a file given for a folder, or a folder for a file
                expected_here = "is a folder" if argv[0] == "lora" or "convert-bench" in argv else "is not a folder"
                assert expected_here in err, (argv, err)
            else:
                assert expected in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.jsonl", "locked", "taken"]  # nothing made
    assert list(locked.iterdir()) == [] and list(folder.iterdir()) == []
    locked.chmod(stat.S_IRWXU)


def test_check_out_helpers_accept_new_and_existing_paths(tmp_path):
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_out_file(tmp_path / "new" / "f.pt") == tmp_path / "new" / "f.pt"
    (tmp_path / "f.pt").write_text("old")
    assert check_out_file(tmp_path / "f.pt") == tmp_path / "f.pt"  # replacing a file is allowed
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_longlive_weights_must_be_a_folder(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "weights.pt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(a_file))
    with pytest.raises(ValueError, match=r"LONGLIVE_WEIGHTS=.*weights\.pt is a file; set it to the folder"):
        weights_root()
    with pytest.raises(ValueError, match="is a file"):
        default_paths(get_preset("tiny"))  # the tiny preset does not silently fall back to random weights
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist; set it to the folder"):
        tiny_dir()
    assert weights_root(must_exist=False) == missing  # a training run may create it
    assert cli.main(["generate", "--model", "tiny", "--frames", "4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"LONGLIVE_WEIGHTS={missing} does not exist" in err and not (tmp_path / "o").exists()
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path))
    assert weights_root() == tmp_path and tiny_dir() == tmp_path / "tiny"
    monkeypatch.delenv("LONGLIVE_WEIGHTS")
    assert tiny_dir() == SHIPPED_TINY  # unset: the shipped tiny weights, as before
    assert default_paths(get_preset("tiny")).vae.parent == SHIPPED_TINY
    monkeypatch.setenv("LONGLIVE_WEIGHTS", "")
    assert tiny_dir() == SHIPPED_TINY  # empty counts as unset


def test_manifest_carries_versions_and_the_dirty_flag(monkeypatch):
    monkeypatch.delenv("LONGLIVE_GIT_COMMIT", raising=False)
    m = manifest()
    for name in ("torch", "numpy", "hydra-core", "omegaconf", "pandas", "matplotlib", "longlive"):
        assert name in KEY_PACKAGES and m["packages"][name], name
    porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    if porcelain.returncode == 0:  # a checkout: the flag is git's answer, and the commit says so too
        assert m["git_dirty"] is bool(porcelain.stdout.strip())
        assert m["git_commit"].endswith("+dirty") is m["git_dirty"]
    else:
        assert m["git_dirty"] is None and m["git_commit"] == "unknown"


def test_dirty_flag_outside_a_checkout_and_with_git_commit_set(tmp_path, monkeypatch):
    monkeypatch.delenv("LONGLIVE_GIT_COMMIT", raising=False)
    assert git_state(tmp_path) == ("unknown", None)  # not a repository
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=repo, check=True)
    commit, dirty = git_state(repo)
    assert dirty is False and len(commit) == 40
    (repo / "b.txt").write_text("untracked")
    assert git_state(repo) == (commit + "+dirty", True)
    sub = repo / "pkg"
    sub.mkdir()
    assert git_state(sub) == ("unknown", None)  # a folder inside some repository is not that repository's checkout
    monkeypatch.setenv("LONGLIVE_GIT_COMMIT", "abc1234+dirty")
    assert git_state(repo) == ("abc1234+dirty", True)
    monkeypatch.setenv("LONGLIVE_GIT_COMMIT", "abc1234")
    assert git_state(repo) == ("abc1234", False) and manifest()["git_commit"] == "abc1234"


def test_env_and_version_commands(capsys, monkeypatch):
    monkeypatch.setenv("LONGLIVE_GIT_COMMIT", "abc1234+dirty")
    assert cli.main(["env"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["git_commit"] == "abc1234+dirty" and env["git_dirty"] is True
    assert {"hydra-core", "omegaconf", "pandas", "matplotlib"} <= set(env["packages"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == version_line() == f"longlive {md.version('longlive')} (commit abc1234, uncommitted changes)"
