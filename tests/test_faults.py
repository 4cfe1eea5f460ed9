"""Fault suite (issue 21): concurrent runs, stale temporaries, corrupt checkpoints, frozen and killed ranks,
non-finite meta-parameters, large seeds, hostile command lines, the library's silent-wrong cases, the study's
cache and the minor list. Each test names the issue's item it covers."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaopt import MetaParameters, adapt, artifacts, popart
from metaopt.artifacts import OutDirLock
from metaopt.cli import main
from metaopt.engines import NonFiniteTaskError
from metaopt.experiments import maml_rl
from metaopt.experiments.maml_rl import CHECKPOINT, load_checkpoint, train
from metaopt.maml import MAMLConfig
from metaopt.verify import check_gradients

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["maml-rl", "--preset", "smoke", "--no-progress", "--no-plot"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def quiet(_text):
    pass


def cfg(**kw):
    base = dict(tasks=3, trajectories=3, iterations=4, popart=True, learn=("beta", "lr"), eval_tasks=2,
                eval_every=2)
    return MAMLConfig(**(base | kw))


def run(c, out, **kw):
    return train(c, out, checkpoint_every=kw.pop("checkpoint_every", 2), progress=False, plot=False, log=quiet, **kw)


def one_error_line(err: str, *needles: str) -> str:
    """The single stderr line of a refused command (no usage block, no traceback), containing ``needles``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0], err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*SMOKE, *argv])
    return code, capsys.readouterr().err


def rewrite_checkpoint(path: Path, edit) -> None:
    """Load a checkpoint, let ``edit`` change it, and save it with an honest digest (a hostile-but-valid file)."""
    state = torch.load(path, weights_only=True)
    state.pop("sha256", None)
    edit(state)
    if hasattr(artifacts, "tree_digest"):  # (absent before issue 21, where no digest was stored)
        state["sha256"] = artifacts.tree_digest(state)
    torch.save(state, path)


# ------------------------------------------------------------------------------- 1. one run per --out
def test_1_a_live_run_locks_out_against_a_second_run(tmp_path):
    out = tmp_path / "d"
    first = subprocess.Popen([sys.executable, "-m", "metaopt.cli", *SMOKE, "--iterations", "100000",
                              "--checkpoint-every", "1", "--seed", "0", "--out", str(out)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        seen = []
        for extra in (["--resume"], ["--overwrite"], []):
            second = subprocess.run([sys.executable, "-m", "metaopt.cli", *SMOKE, "--iterations", "100000",
                                     "--seed", "1", "--out", str(out), *extra], env=ENV, capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            seen.append(one_error_line(second.stderr, "--out", str(out)))
        assert "in use by another running process" in seen[0] and "in use" in seen[1]
        assert json.loads((out / "config.json").read_text())["seed"] == 0  # the first run's files, untouched
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_1_a_fresh_run_is_refused_while_out_is_locked_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "d"
    lock = OutDirLock(out).acquire()
    try:
        code, err = cli(capsys, "--out", str(out))
        assert code == 2
        one_error_line(err, "--out", "in use by another running process")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        lock.release(clean=True)
    assert not out.exists()
    assert main([*SMOKE, "--out", str(out)]) == 0  # free again: the lock file went with its holder
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------------- 2. stale-temp cleanup
def test_2_stale_temp_cleanup_deletes_only_metaopts_temporaries(tmp_path, capsys):
    out = tmp_path / "d"
    assert main([*SMOKE, "--iterations", "2", "--out", str(out)]) == 0
    mine = [".metrics.csv.mynotes1", ".checkpoint.pt.abcd_123", ".config.json.notes"]
    for name in mine:
        (out / name).write_text("user data")
    (out / ".checkpoint.pt.metaopt-tmp-ab_cd123").write_bytes(b"partial")  # what a kill mid-write leaves
    assert main([*SMOKE, "--iterations", "3", "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    assert all((out / n).read_text() == "user data" for n in mine)
    assert not (out / ".checkpoint.pt.metaopt-tmp-ab_cd123").exists()


# ------------------------------------------------------------------------------ 3. checkpoint trust
def _trained(tmp_path, **kw):
    c = cfg(**kw)
    run(c, tmp_path)
    return c, tmp_path / CHECKPOINT


def test_3_a_flipped_byte_in_an_adam_moment_is_refused(tmp_path):
    c, path = _trained(tmp_path)
    state = torch.load(path, weights_only=True)
    moment = state["optimizer"]["state"][0]["exp_avg"]
    raw, data = path.read_bytes(), moment.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at > 0 and raw.count(data) == 1
    flipped = bytearray(raw)
    flipped[at + 5] ^= 0x10
    path.write_bytes(bytes(flipped))
    assert not torch.equal(torch.load(path, weights_only=True)["optimizer"]["state"][0]["exp_avg"], moment)
    with pytest.raises(ValueError, match=r"is corrupt: its contents do not match its SHA-256 digest"):
        load_checkpoint(path, c)


@pytest.mark.parametrize("iteration,match", [
    (-5, r"iteration must be an int >= 0, got -5"),
    (10**9, r"--iterations must be >= the 1000000000 iterations"),
    (True, r"iteration must be an int >= 0, got True"),
])
def test_3_checkpoint_iteration_is_validated(tmp_path, iteration, match):
    c, path = _trained(tmp_path)
    rewrite_checkpoint(path, lambda s: s.update(iteration=iteration))
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, c)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s["model"].update({"policy.weight": torch.zeros(3, 3)}), r"model\['policy.weight'\] must be a"),
    (lambda s: s["meta"].update({"log_lr": torch.tensor(float("nan"))}), r"meta\['log_lr'\] holds non-finite"),
    (lambda s: s.update(generator=torch.zeros(7, dtype=torch.uint8)), r"generator must be a"),
    (lambda s: s.update(generator=torch.full_like(s["generator"], 255)), r"not a valid generator state"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)), r"optimizer state exp_avg of parameter 0"),
    (lambda s: s["history"].update(train=[{"iteration": 3}, {"iteration": 3}]), r"its train rows must be"),
])
def test_3_checkpoint_fields_are_validated_with_one_line(tmp_path, edit, match):
    c, path = _trained(tmp_path)
    rewrite_checkpoint(path, edit)
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path, c)
    assert "\n" not in str(info.value)


def test_3_resume_with_fewer_iterations_than_done_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    assert main([*SMOKE, "--iterations", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = cli(capsys, "--iterations", "2", "--out", str(out), "--resume")
    assert code == 2
    one_error_line(err, "--iterations", "got 2", "4 iterations")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # config.json still says 4


def test_3_extending_a_finished_run_matches_an_uninterrupted_one(tmp_path):
    short = run(cfg(iterations=3), tmp_path / "a")
    assert [r["iteration"] for r in short.eval] == [2, 3]  # 3: the end of the shorter run
    extended = run(cfg(iterations=4), tmp_path / "a", resume=True)
    straight = run(cfg(iterations=4), tmp_path / "b")
    assert [r["iteration"] for r in straight.eval] == [2, 4]
    assert extended.eval == straight.eval
    assert (tmp_path / "a" / "eval.csv").read_text() == (tmp_path / "b" / "eval.csv").read_text()


# -------------------------------------------------------------------------------- 4. frozen/killed ranks
def _frozen_or_killed(comm, mode):
    x = torch.ones(3)
    comm.all_reduce_sum([x])
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP if mode == "stop" else signal.SIGKILL)
    comm.all_reduce_sum([x])
    return 0


@pytest.mark.parametrize("mode", ["stop", "kill"])
def test_4_a_frozen_or_killed_rank_ends_the_job_with_one_line(mode, capfd):
    from metaopt.distributed import launch

    t0 = time.monotonic()
    code = launch(_frozen_or_killed, 2, mode, prog="metaopt test", timeout=3.0)
    took = time.monotonic() - t0
    err = capfd.readouterr().err
    assert code == 4
    line = one_error_line(err, "metaopt test: error:", "rank 0: all_reduce failed")
    if mode == "stop":
        assert "Timed out" in line and took < 60, took
    else:
        assert "process 1 was killed by SIGKILL" in line


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the workers")
def test_4_a_frozen_rank_of_maml_rl_nproc_ends_with_one_line_and_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "metaopt.cli", *SMOKE, "--iterations", "100000", "--nproc", "2",
                             "--dist-timeout", "4", "--checkpoint-every", "1", "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).is_file():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = sorted(c for c in _children(proc.pid)
                         if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace"))
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGSTOP)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 4
    line = one_error_line(err, "metaopt maml-rl: error:", "did not answer in time", "last good checkpoint")
    good = int(line.rsplit("(iteration ", 1)[1].rstrip(")"))
    state = load_checkpoint(out / CHECKPOINT, MAMLConfig(**(maml_rl.PRESETS["smoke"] | {"iterations": 100000})))
    assert state["iteration"] >= good >= 1


# ------------------------------------------------------------------------ 5. non-finite meta-parameters
def test_5_meta_lr_that_overflows_lr_leaves_no_inf_anywhere(tmp_path, capsys):
    out = tmp_path / "d"
    code, err = cli(capsys, "--meta-lr", "1e4", "--learn", "lr", "--checkpoint-every", "1", "--out", str(out))
    assert code == 3
    line = one_error_line(err, "made the meta-parameters non-finite", "lr[policy.bias]=inf")  # one lr per tensor
    assert "inf" not in (out / "metrics.json").read_text().replace(line, "")
    assert not (out / "metrics.csv").exists() or "inf" not in (out / "metrics.csv").read_text()
    if (out / CHECKPOINT).exists():  # the last good one: finite
        state = load_checkpoint(out / CHECKPOINT, MAMLConfig(popart=True, learn=("lr",), meta_lr=1e4, iterations=3,
                                                              tasks=4, trajectories=4, eval_every=2, eval_tasks=4))
        assert torch.isfinite(state["meta"]["log_lr"].exp())


def test_5_the_pointer_after_a_broken_outer_step_resumes(tmp_path, monkeypatch):
    c = cfg(iterations=5, learn=("lr",))
    real = maml_rl.MetaLearner.apply

    def apply(self, grads):
        real(self, grads)
        if self.iteration == 3:
            with torch.no_grad():
                self.meta.log_lr.fill_(1e4)  # lr = exp(1e4) = inf

    monkeypatch.setattr(maml_rl.MetaLearner, "apply", apply)
    broken = run(c, tmp_path, checkpoint_every=1)
    assert broken.status == "non-finite" and "iteration 3" in broken.error and "(iteration 2)" in broken.error
    assert broken.summary["lr"] < float("inf") and [r["iteration"] for r in broken.train] == [1, 2]
    monkeypatch.setattr(maml_rl.MetaLearner, "apply", real)
    resumed = run(c, tmp_path, resume=True, checkpoint_every=1)
    assert resumed.status == "completed" and resumed.learner.iteration == 5


# ---------------------------------------------------------------------------------------- 6. seeds
@pytest.mark.parametrize("seed", [str(1764658800000000000), str(2**62), str(2**63), str(2**70), "-1"])
def test_6_out_of_range_seeds_are_refused_up_front(tmp_path, capsys, seed):
    code, err = cli(capsys, "--seed", seed, "--out", str(tmp_path / "d"))
    assert code == 2
    one_error_line(err, "--seed", seed)
    assert not (tmp_path / "d").exists()


def test_6_the_largest_seed_trains_and_evaluates(tmp_path, capsys):
    from metaopt.maml.config import MAX_SEED

    code, err = cli(capsys, "--seed", str(MAX_SEED), "--iterations", "2", "--out", str(tmp_path / "d"))
    assert code == 0, err


# -------------------------------------------------------------------------------- 7. CLI tracebacks
@pytest.mark.parametrize("argv,needle", [
    (["--device", "meta"], "--device"),
    (["--device", "mps"], "--device"),
    (["--hidden", str(10**12)], "--hidden=1000000000000"),
    (["--tasks", str(10**9)], "--tasks=1000000000"),
    (["--beta", "1e-300"], "--beta"),
])
def test_7_bad_sizes_and_devices_are_one_line_and_write_nothing(tmp_path, capsys, argv, needle):
    code, err = cli(capsys, *argv, "--out", str(tmp_path / "d"))
    assert code == 2
    one_error_line(err, needle)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("path,needle", [
    ("/proc/metaopt-test/x", "/proc/metaopt-test/x"),  # root: cannot be created; others: not writable
    ("{tmp}/" + "a" * 300, "path component of 300 bytes"),
    ("{tmp}/" + "/".join(["b" * 200] * 25), "bytes long as an absolute path"),
])
def test_7_unusable_out_paths_are_one_line(tmp_path, capsys, path, needle):
    code, err = cli(capsys, "--out", path.format(tmp=tmp_path))
    assert code == 2
    one_error_line(err, "--out", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _limit_file_size():  # runs in the child: writes beyond 64 KiB fail with EFBIG (a full disk, for one process)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_7_a_full_disk_is_one_line_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "d"
    argv = [sys.executable, "-m", "metaopt.cli", *SMOKE, "--hidden", "96", "--iterations", "3",
            "--checkpoint-every", "1", "--out", str(out)]  # ~80 KiB checkpoints: beyond the 64 KiB limit
    full = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert full.returncode == 4, full.stderr
    one_error_line(full.stderr, "writing into", "File too large", "no checkpoint was written")
    assert (out / "config.json").is_file()
    assert not [p for p in out.iterdir() if "metaopt-tmp" in p.name]


def test_7_a_full_disk_mid_run_points_at_a_checkpoint_that_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "d"
    real, calls = maml_rl.atomic_write, {"n": 0}

    def full_at_third_checkpoint(path, data):
        if Path(path).name == CHECKPOINT:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(maml_rl, "atomic_write", full_at_third_checkpoint)
    code, err = cli(capsys, "--iterations", "4", "--checkpoint-every", "1", "--out", str(out))
    assert code == 4
    one_error_line(err, "No space left on device", f"the last good checkpoint is {out / CHECKPOINT} (iteration 2)")
    monkeypatch.setattr(maml_rl, "atomic_write", real)
    code, err = cli(capsys, "--iterations", "4", "--checkpoint-every", "1", "--out", str(out), "--resume")
    assert code == 0, err
    assert [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ 8. library silent-wrong
def test_8_single_task_adapt_raises_on_non_finite_weights():
    from tests._toy import make_inner, make_model, make_tasks

    model = make_model()
    tasks = make_tasks(1)
    batch = {"x": tasks["x"][0, 0], "y": tasks["y"][0, 0]}
    meta = MetaParameters(lr=1e200, dtype=torch.float64)
    with pytest.raises(NonFiniteTaskError, match=r"non-finite values \(params"):
        adapt(model, make_inner(model, popart=False, steps=3), batch, meta)
    res = adapt(model, make_inner(model, popart=False, steps=3), batch, meta, check=False)
    assert not all(bool(torch.isfinite(p).all()) for p in res.params.values())
    nan_batch = {"x": batch["x"], "y": torch.full_like(batch["y"], float("nan"))}
    with pytest.raises(NonFiniteTaskError):
        adapt(model, make_inner(model, popart=False), nan_batch, MetaParameters(dtype=torch.float64))


def test_8_popart_art_refuses_targets_whose_moments_overflow():
    state = popart.init(1)
    with pytest.raises(ValueError, match=r"targets are too large for torch.float32"):
        popart.art(state, torch.full((4, 1), 3e38), 0.1)
    ok = popart.art(popart.init(1, dtype=torch.float64), torch.full((4, 1), 3e38, dtype=torch.float64), 0.1,
                    sigma_max=1e100)
    assert float(ok.mu) == pytest.approx(3e37, rel=1e-12)


def test_8_meta_parameters_refuse_what_they_cannot_represent():
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch dtype .* got torch.int64"):
        MetaParameters(dtype=torch.int64)
    with pytest.raises(ValueError, match=r"lr must be representable in torch.float32 .* got 1e-50"):
        MetaParameters(lr=1e-50)
    assert float(MetaParameters(lr=1e-50, dtype=torch.float64).lr) == pytest.approx(1e-50, rel=1e-12)
    with pytest.raises(ValueError, match=r"beta must be representable in torch.float32 .* got 1e-300"):
        MetaParameters(beta=1e-300)
    assert MetaParameters(learn="lr").learn == ("lr",)
    assert [n for n, _ in MetaParameters(learn="lr").named_parameters()] == ["log_lr"]
    with pytest.raises(ValueError, match=r"learn must be a collection of names .* got the string 'lr,beta'"):
        MetaParameters(learn="lr,beta")


def test_8_check_gradients_refuses_checks_that_compare_nothing():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"max_elements must be None or an int >= 1, got 0"):
        check_gradients(lambda: (x**2).sum(), {"x": x}, max_elements=0)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got 0"):
        check_gradients(lambda: (x**2).sum(), {"x": x}, eps=0)
    with pytest.raises(ValueError, match=r"objective\(\) must depend differentiably on the inputs \['x'\]"):
        check_gradients(lambda: (x.detach() ** 2).sum(), {"x": x})
    with pytest.raises(ValueError, match=r"inputs must name at least one tensor"):
        check_gradients(lambda: (x**2).sum(), {})
    assert check_gradients(lambda: (x**2).sum(), {"x": x}, max_elements=1).passed


# ----------------------------------------------------------------------------------- 9. study cache
def _spec():
    from metaopt.experiments.study import RunSpec

    c = {"tasks": 2, "trajectories": 2, "iterations": 1, "eval_every": 0, "eval_tasks": 1, "seed": 0}
    return RunSpec("p", "m", 0.1, 0, c, (1.0,), 2, eval_repeats=1)


@pytest.mark.parametrize("damage", ["truncate", "mistype", "fabricate", "no_key", "inconsistent"])
def test_9_an_invalid_cached_run_is_rebuilt(tmp_path, damage):
    from metaopt.experiments.study import execute

    spec = _spec()
    first = execute(spec, tmp_path)
    path = tmp_path / f"{spec.key}.json"
    text = path.read_text()
    assert execute(spec, tmp_path) == first  # a valid cache is used
    data = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "mistype":
        data["gain_per_task"] = [["0.5"] * len(r) for r in data["gain_per_task"]]
        path.write_text(json.dumps(data))
    elif damage == "fabricate":  # a valid-looking result with invented gains but no key of this run
        data |= {"cache_key": "0" * 64, "gain_per_task": [[9.0, 9.0]], "gain_by_scale": [9.0], "mean_gain": 9.0,
                 "worst_gain": 9.0}
        path.write_text(json.dumps(data))
    elif damage == "no_key":
        del data["cache_key"]
        path.write_text(json.dumps(data))
    else:  # the summary does not follow from the per-task gains
        data["mean_gain"] = data["mean_gain"] + 1.0
        path.write_text(json.dumps(data))
    again = execute(spec, tmp_path)
    assert again["gain_per_task"] == first["gain_per_task"] and again["mean_gain"] == first["mean_gain"]
    assert json.loads(path.read_text())["cache_key"] == first["cache_key"]


# ----------------------------------------------------------------------------------------- 10. minor
def test_10_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["maml-rl", "--tasks", "many"])
    assert info.value.code == 2
    one_error_line(capsys.readouterr().err, "--tasks", "many")
    with pytest.raises(SystemExit):
        maml_rl.main(["--bogus"])
    one_error_line(capsys.readouterr().err, "--bogus")


def test_10_popart_regression_refuses_to_overwrite_results(tmp_path, capsys):
    base = ["popart-regression", "--seeds", "2", "--steps", "20", "--no-plot", "--out", str(tmp_path)]
    assert main(base) == 0
    before = (tmp_path / "summary.json").read_bytes()
    capsys.readouterr()
    assert main([*base, "--seed", "5"]) == 2
    one_error_line(capsys.readouterr().err, "--out", "summary.json", "--overwrite")
    assert (tmp_path / "summary.json").read_bytes() == before
    assert main([*base, "--seed", "5", "--overwrite"]) == 0
    assert (tmp_path / "summary.json").read_bytes() != before


def test_10_estimator_study_refuses_to_overwrite_results(tmp_path, capsys):
    (tmp_path / "study.json").write_text("{}")
    assert main(["estimator-study", "--quick", "--no-plot", "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "--out", "study.json", "--overwrite")
    assert (tmp_path / "study.json").read_text() == "{}"


def test_10_verify_refuses_to_overwrite_its_out_file(tmp_path, capsys):
    out = tmp_path / "v.json"
    out.write_text("earlier")
    assert main(["verify", "--checks", "torchopt-toy", "--engines", "func", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--out", "--overwrite")
    assert out.read_text() == "earlier"
    assert main(["verify", "--checks", "torchopt-toy", "--engines", "func", "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() != "earlier"
