"""The ``cavmae`` command line, run in-process as a user would, on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import make_tiny_models

from cavmae.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.synthetic import AVShapesConfig, render_clip, write_video

    d = tmp_path_factory.mktemp("cli")
    pt, ft = make_tiny_models(d)
    media = d / "media"
    media.mkdir()
    cfg = AVShapesConfig(duration_s=3.0, fps=5)
    for i in range(3):
        write_video(render_clip(i, 1, cfg), media / f"clip{i}.mp4")
    (d / "bad.mp4").write_bytes(b"\x00garbage" * 100)
    return {"dir": d, "pt": pt, "ft": ft, "media": media}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classify_json(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "classify", str(env["media"] / "clip0.mp4"), "--model", str(env["ft"]),
        "--json", "--top-k", "2",
    )
    assert code == 0, err
    res = json.loads(out)
    assert res[0]["mode"] == "multimodal" and len(res[0]["predictions"]) == 2
    assert res[0]["frames"] == 10


def test_classify_bfloat16_precision(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys, "classify", str(env["media"] / "clip0.mp4"), "--model", str(env["ft"]),
        "--json", "--precision", "bfloat16",
    )
    assert code == 0, err
    assert json.loads(out)[0]["mode"] == "multimodal"
    code, out, err = _run(capsys, "info", "--model", str(env["ft"]), "--precision", "bfloat16")
    assert code == 0 and "bfloat16" in out, err


def test_bad_input_is_one_line(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "classify", str(env["dir"] / "bad.mp4"), "--model", str(env["ft"]))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.mp4" in lines[0]
    assert "Traceback" not in err
    code, _, err = _run(capsys, "classify", str(env["dir"] / "missing.mp4"), "--model", str(env["ft"]))
    assert code == 2 and "missing.mp4" in err
    code, _, err = _run(capsys, "info", "--model", str(env["dir"] / "bad.mp4"))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_reconstruct_writes_outputs(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = env["dir"] / "recon"
    code, out, err = _run(
        capsys, "reconstruct", str(env["media"] / "clip1.mp4"), "--model", str(env["pt"]),
        "--out", str(out_dir), "--mode-a", "time", "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["masked_a"] == 384 and summary["masked_v"] == 147
    for name in ("spec_original.png", "frame_composite.png", "audio_composite.wav", "summary.json"):
        assert (out_dir / name).stat().st_size > 0


def test_embed_npz(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    npz = env["dir"] / "emb.npz"
    files = [str(p) for p in sorted(env["media"].glob("*.mp4"))]
    code, _, err = _run(capsys, "embed", *files, "--model", str(env["pt"]), "--out", str(npz))
    assert code == 0, err
    z = np.load(npz)
    assert z["audio"].shape == (3, 32) and z["visual"].shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(z["audio"], axis=1), 1.0, atol=1e-5)


def test_index_build_and_search(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = env["dir"] / "library"
    shutil.copytree(env["media"], folder)
    idx = env["dir"] / "idx"
    code, out, err = _run(capsys, "index", "build", str(folder), "--model", str(env["pt"]), "--index", str(idx), "--json")
    assert code == 0, err
    assert json.loads(out)["items"] == 3
    # A clip's own entry comes first within a modality.
    code, out, err = _run(
        capsys, "index", "search", str(folder / "clip2.mp4"), "--model", str(env["pt"]),
        "--index", str(idx), "--direction", "visual->visual", "-k", "3", "--json",
    )
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert Path(hits[0]["key"]).name == "clip2.mp4" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # Incremental: a second build embeds nothing new.
    code, out, _ = _run(capsys, "index", "build", str(folder), "--model", str(env["pt"]), "--index", str(idx), "--json")
    assert code == 0 and json.loads(out)["items"] == 3
    # Human-readable output: counts, not a dict dump; ranks start at 1.
    code, out, _ = _run(capsys, "index", "build", str(folder), "--model", str(env["pt"]), "--index", str(idx))
    assert code == 0 and "3 items (0 added, 0 updated, 0 removed, 3 unchanged, 0 skipped)" in out
    code, out, err = _run(
        capsys, "index", "search", str(folder / "clip2.mp4"), "--model", str(env["pt"]),
        "--index", str(idx), "--direction", "visual->visual", "-k", "2",
    )
    rows = out.strip().splitlines()[1:]
    assert code == 0 and [r.split()[0] for r in rows] == ["1", "2"] and rows[0].endswith("clip2.mp4")


def test_evaluate_retrieval(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "evaluate", "retrieval", str(env["media"]), "--model", str(env["pt"]), "--json")
    assert code == 0, err
    m = json.loads(out)["metrics"]
    assert set(m) == {"audio->visual", "visual->audio"}
    for v in m.values():
        assert 0.0 <= v["R@1"] <= v["R@5"] <= 1.0


def test_zoo_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "zoo", "list", "--json")
    names = {e["name"] for e in json.loads(out)}
    assert code == 0 and len(names) >= 20


def test_convert_official_pth(env: dict[str, Path], fixtures_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = torch.load(fixtures_dir / "parity_a.pt", weights_only=True)
    src = env["dir"] / "official.pth"
    torch.save(fx["state_dict"], src)
    dst = env["dir"] / "converted.safetensors"
    code, _, err = _run(capsys, "convert", str(src), str(dst), "--num-heads", "4", "--decoder-num-heads", "4")
    assert code == 0, err
    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(dst)
    assert loaded.config.num_heads == 4 and loaded.config.embed_dim == 64
    code, _, err = _run(capsys, "convert", str(src), str(env["dir"] / "x.safetensors"))
    assert code == 2 and "num_heads" in err
