"""Train tab: subprocess jobs (start, poll, stop = the process group, resume) and using a run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from app.handlers import classify as ch
from app.handlers import clips
from app.handlers import train as th
from app.jobs import JobRegistry
from app.services import Services


def _wait(cond, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_terminates_the_whole_process_group(tmp_path: Path) -> None:
    jobs = JobRegistry(tmp_path / "runs")
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)"
    )
    job = jobs.start(
        tmp_path / "runs" / "r1",
        "pretrain",
        [[sys.executable, "-c", script], [sys.executable, "-c", "print('never')"]],
    )
    _wait(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    child = int(pid_file.read_text())
    with pytest.raises(Exception, match="already running"):
        jobs.start(tmp_path / "runs" / "r1", "pretrain", [[sys.executable, "-c", "pass"]])
    assert jobs.stop(tmp_path / "runs" / "r1", timeout_s=5)
    assert job.status == "stopped" and "Resume" in job.message
    _wait(lambda: not _alive(child), 10)  # the grandchild died with its group
    assert "started" in job.log_tail() and "never" not in job.log_tail()
    assert not jobs.stop(tmp_path / "runs" / "r1")


def test_failed_step_reports_its_output(tmp_path: Path) -> None:
    jobs = JobRegistry(tmp_path / "runs")
    job = jobs.start(
        tmp_path / "runs" / "bad",
        "finetune",
        [[sys.executable, "-c", "import sys; print('no data here'); sys.exit(3)"]],
    )
    _wait(lambda: not job.running)
    assert job.status == "failed" and "code 3" in job.message and "no data here" in job.message


def test_start_validates_the_form(services: Services, tmp_path: Path) -> None:
    with pytest.raises(gr.Error, match="not a folder"):
        th.start(
            services,
            "pretrain",
            "tiny_smoke",
            "Folder of videos",
            str(tmp_path / "nope"),
            0,
            "cavmae_tiny",
            1,
            0,
            0,
            "",
            "",
        )
    with pytest.raises(gr.Error, match="between 10 and"):
        th.start(
            services,
            "pretrain",
            "tiny_smoke",
            "Synthetic AV-Shapes",
            "",
            3,
            "cavmae_tiny",
            1,
            0,
            0,
            "",
            "",
        )
    with pytest.raises(gr.Error, match="not a valid run name"):
        th.start(
            services,
            "pretrain",
            "tiny_smoke",
            "Synthetic AV-Shapes",
            "",
            20,
            "cavmae_tiny",
            1,
            0,
            0,
            "",
            "../x",
        )
    assert "tiny_smoke" in th.recipe_choices("pretrain") and "tiny_smoke_ft" in th.recipe_choices(
        "finetune"
    )


def test_poll_reads_status_and_metrics(services: Services) -> None:
    run = services.settings.runs_dir / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": "pretrain", "epochs": 4}))
    (run / "status.json").write_text(
        json.dumps({"status": "finished", "epoch": 4, "total_epochs": 4})
    )
    recs = [{"type": "step", "step": i, "loss": 2.0 - i / 10, "lr": 1e-3} for i in range(1, 6)]
    recs.append(
        {"type": "epoch", "epoch": 1, "train_loss": 1.7, "val_loss": 1.8, "val_num_samples": 2}
    )
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + '\n{"type": "st')
    text, log, losses, metrics = th.poll(services, "r")
    assert "**finished**" in text and "epoch 4/4" in text
    assert [t.name for t in losses.data] == ["loss"] and list(losses.data[0].y) == pytest.approx(
        [1.9, 1.8, 1.7, 1.6, 1.5]
    )
    assert [t.name for t in metrics.data] == ["train_loss", "val_loss"]
    assert th.poll(services, None)[0] == "No run selected."
    with pytest.raises(gr.Error, match="not running"):
        th.stop(services, "r")
    with pytest.raises(gr.Error, match="not started from this app"):
        th.resume(services, "r")


def test_resume_reruns_only_the_training_command(services: Services, tmp_path: Path) -> None:
    from training.data.formats import MANIFEST_FILE

    data = tmp_path / "prepared"
    data.mkdir()
    run = services.settings.runs_dir / "r2"
    run.mkdir(parents=True)
    steps = [[sys.executable, "-c", "print('PREPARE')"], [sys.executable, "-c", "print('TRAIN')"]]
    (run / th.JOB_FILE).write_text(
        json.dumps({"kind": "pretrain", "steps": steps, "data": str(data)})
    )
    assert th.resume(services, "r2").startswith("Resumed")
    job = services.jobs.get(run)
    _wait(lambda: not job.running)
    assert "PREPARE" in job.log_tail() and job.status == "finished"  # not prepared yet: both steps
    (data / MANIFEST_FILE).write_text("{}")
    (run / "app_job.log").unlink()
    th.resume(services, "r2")
    job = services.jobs.get(run)
    _wait(lambda: not job.running)
    assert "TRAIN" in job.log_tail() and "PREPARE" not in job.log_tail()


@pytest.mark.slow
def test_pretrain_then_finetune_then_use(services: Services, media: dict[str, Path]) -> None:
    """Synthetic data -> tiny pretraining -> fine-tuning from it -> the session classifies with it."""
    text, name = th.start(
        services,
        "pretrain",
        "tiny_smoke",
        "Synthetic AV-Shapes",
        "",
        16,
        "cavmae_tiny",
        1,
        0,
        0,
        "",
        "pt",
    )
    assert name == "pt" and "preparing the data" in text
    job = services.jobs.get(services.settings.runs_dir / "pt")
    _wait(lambda: not job.running, 240)
    assert job.status == "finished", job.log_tail()
    status, log, losses, _ = th.poll(services, "pt")
    assert "finished" in status and "Use this model" in status and len(losses.data) >= 1
    text, _ = th.start(
        services,
        "finetune",
        "tiny_smoke_ft",
        "Synthetic AV-Shapes",
        "",
        16,
        "cavmae_tiny",
        1,
        0,
        0,
        "pt",
        "ft",
    )
    assert "training" in text and "preparing" not in text  # the prepared data is reused
    job = services.jobs.get(services.settings.runs_dir / "ft")
    _wait(lambda: not job.running, 240)
    assert job.status == "finished", job.log_tail()
    assert str(services.settings.runs_dir / "pt" / "model.safetensors") in " ".join(job.steps[-1])
    state, _, _ = clips.use_upload(services, None, str(media["clip"]))
    state, text, overview, labels = th.use_run(services, state, "ft")
    assert len(labels) == 10 and "recipe tiny_smoke_ft" in overview
    assert "now use" in text and "Classifier" in overview
    state, fig, mode_text = ch.classify(services, state, 3, "auto", True)
    assert len(fig.data[0].x) == 3
