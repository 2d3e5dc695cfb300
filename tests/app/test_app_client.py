"""Every public named endpoint, called with gradio_client against the app launched in-process.

The app runs on 127.0.0.1 on a free port with tiny random-weight models and generated samples.
Each gradio_client ``Client`` is one browser session (its own ``gr.State``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = pytest.mark.slow  # one in-process server for the module (~15 s in all)

CALLED: set[str] = set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path], media: dict[str, Path]
) -> Iterator[str]:
    from app.services import Services
    from app.settings import AppSettings
    from app.ui import build_demo, launch_kwargs

    tmp = tmp_path_factory.mktemp("app")
    pt, ft = tiny_models
    settings = AppSettings(
        model=str(ft),
        pretrain=str(pt),
        samples_dir=media["samples"],
        runs_dir=tmp / "runs",
        work_dir=tmp / "work",
        port=_free_port(),
        allowed_paths=(media["samples"].parent,),
    )
    services = Services.create(settings)
    services.preload()
    demo = build_demo(services, settings)
    demo.queue(max_size=settings.queue_size)
    kwargs = launch_kwargs(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


def _call(client: Client, name: str, *args: Any) -> Any:
    CALLED.add(name)
    return client.predict(*args, api_name=f"/{name}")


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def test_clip_and_reconstruction_endpoints(client: Client, media: dict[str, Path]) -> None:
    html, info = _call(client, "use_sample", "clip1.mp4")
    assert "clip1.mp4" in html and "3.0 s" in info
    out = _call(client, "mask_ratio_a", 50, 75, "unstructured", 0, 5)
    assert len(out) == 9 and "4/8 patches masked" in out[-1] and "3/4 patches masked" in out[-1]
    assert [Path(p).suffix for p in out[1:4]] == [
        ".png",
        ".jpg",
        ".jpg",
    ]  # masked, recon, composite
    assert [Path(p).suffix for p in out[5:8]] == [".png", ".jpg", ".jpg"]
    # The originals are not sent again on a slider move (a "no change" update).
    assert isinstance(out[0], dict) and out[0].get("__type__") == "update" and out[0] == out[4]
    for name, args, masked in (
        ("mask_ratio_v", (50, 25, "unstructured", 0, 5), "1/4"),
        ("mask_mode_a", (50, 25, "time", 0, 5), "4/8"),
        ("mask_seed", (50, 25, "time", 3, 5), "4/8"),
        ("mask_frame", (50, 25, "time", 3, 2), "4/8"),
    ):
        out = _call(client, name, *args)
        assert f"{masked} patches masked" in out[-1], (name, out[-1])
    out = _call(client, "mask_clear", "audio", 50, 25, "time", 3, 2)
    assert "0/8 patches masked (by hand)" in out[-1]
    out = _call(client, "mask_invert", "audio", 50, 25, "time", 3, 2)
    assert "8/8 patches masked (by hand)" in out[-1]
    out = _call(client, "mask_random", "visual", 50, 50, "time", 3, 2)
    assert "2/4 patches masked (by hand)" in out[-1]
    out = _call(client, "mask_sliders", "both", 50, 50, "time", 3, 2)
    assert "(random)" in out[-1] and "by hand" not in out[-1]
    original, rec, status = _call(client, "render_audio")
    assert Path(rec).suffix == ".wav" and "Griffin-Lim" in status
    plot = _call(client, "loss_sweep", "unstructured", 0)
    assert plot["type"] == "plotly"
    html, info = _call(client, "use_upload", handle_file(str(media["silent"])))
    assert "no audio track" in info
    html, info = _call(client, "use_recording", handle_file(str(media["clip2"])))
    assert "clip1.mp4" in html or "<video" in html
    with pytest.raises(AppError, match="corrupt.mp4"):
        _call(client, "use_upload", handle_file(str(media["corrupt"])))


def test_similarity_and_classify_endpoints(
    client: Client, media: dict[str, Path], tmp_path: Path
) -> None:
    _call(client, "use_sample", "clip0.mp4")
    img, text = _call(client, "where_sound", 4, "cosine")
    assert Path(img).is_file() and "Frame 5/10" in text and "cosine from" in text
    img, text = _call(client, "where_sound_frame", 6, "cosine")
    assert "Frame 7/10" in text
    img, text = _call(client, "where_sound_method", 6, "occlusion")
    assert Path(img).is_file() and "left out" in text
    on_frame, on_spec, text = _call(client, "attention", 5)
    assert Path(on_frame).is_file() and "attention" in text
    plot, text = _call(client, "temporal_similarity", 1, 1)
    assert plot["type"] == "plotly" and "3 windows" in text
    plot, text = _call(client, "contrastive")
    assert "ranks" in text
    plot, text = _call(client, "classify", 3, "auto", True)
    assert plot["type"] == "plotly" and "multimodal" in text
    plot, text = _call(client, "classify_timeline", 1, 1, "auto", 2)
    assert "3 windows" in text
    files = [handle_file(str(media[k])) for k in ("clip", "audio", "corrupt")]
    table, csv_file, status = _call(client, "classify_batch", files, 2, "auto")
    assert [row[0] for row in table["data"]] == ["clip0.mp4", "tone.wav", "corrupt.mp4"]
    assert Path(csv_file).read_text().count("\n") == 4 and "2 of 3" in status


def test_retrieval_endpoints(client: Client, media: dict[str, Path]) -> None:
    status = _call(client, "build_index", "Folder", str(media["samples"]))
    assert "3 items" in status
    gallery, hits, status, player = _call(
        client, "search", handle_file(str(media["clip"])), False, "visual → audio", 2
    )
    assert len(gallery) == 2 and len(hits["data"]) == 2 and "visual → audio" in status
    assert (
        hits["data"][0][1] >= hits["data"][1][1]
    )  # best first (an upload is a copy: not excluded)
    html = _call(client, "play_rank", 2)
    assert hits["data"][1][2] in html
    gallery, hits, status, player = _call(client, "search", None, True, "auto", 5)
    assert len(hits["data"]) >= 1
    table, text = _call(client, "evaluate_retrieval")
    assert [r[0] for r in table["data"]][:2] == ["audio->visual", "visual->audio"]


def test_model_and_train_endpoints(client: Client, tiny_models: tuple[Path, Path]) -> None:
    pt, ft = tiny_models
    _call(client, "model_source", "Local file")  # visibility updates only
    status, overview, labels = _call(
        client, "load_model", "Local file", None, str(pt), None, None, None, None, None
    )
    assert "pretrain.safetensors" in status and "Decoder" in overview and labels["data"] == []
    with pytest.raises(AppError, match="classification needs"):
        _call(client, "classify", 3, "auto", True)
    status, overview, labels = _call(
        client, "load_model", "Local file", None, str(ft), None, str(pt), None, None, None
    )
    assert len(labels["data"]) == 4
    with pytest.raises(AppError, match="give the path"):
        _call(client, "load_model", "Local file", None, None, None, None, None, None, None)
    with pytest.raises(AppError, match="neither an existing file"):
        _call(
            client, "load_model", "Local file", None, "/nonexistent.pt", None, None, None, None, None
        )
    status, overview, labels = _call(
        client, "load_model", "Bundled demo", None, None, None, None, None, None, None
    )
    assert "demo" in status.lower() and len(labels["data"]) == 10  # av_shapes classes
    assert "(float32)" in overview  # "auto" on CPU
    status, overview, labels = _call(
        client, "load_model", "Bundled demo", None, None, None, None, None, None, None, "bfloat16"
    )
    assert "demo (bfloat16)" in status and "(bfloat16)" in overview and len(labels["data"]) == 10
    status, overview, _ = _call(
        client, "load_model", "Bundled demo", None, None, None, None, None, None, None, "auto"
    )
    assert "(float32)" in overview and "bfloat16" not in status
    recipes = _call(client, "train_recipes", "finetune")
    runs = _call(client, "train_runs", None)
    text, log, losses, metrics = _call(client, "train_poll", None)
    assert text == "No run selected."
    text, log, losses, metrics = _call(client, "train_select", None)
    with pytest.raises(AppError, match="not a folder"):
        _call(
            client,
            "train_start",
            "finetune",
            "tiny_smoke_ft",
            "Folder of videos",
            "/nonexistent",
            10,
            "cavmae_tiny",
            1,
            0,
            0,
            "scratch",
            "",
        )
    with pytest.raises(AppError, match="choose a run"):
        _call(client, "train_stop", None)
    with pytest.raises(AppError, match="choose a run"):
        _call(client, "train_resume", None)
    with pytest.raises(AppError, match="choose a run"):
        _call(client, "train_use", None)
    del recipes, runs


def test_two_sessions_keep_their_own_state(app_url: str) -> None:
    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    a.predict("clip0.mp4", api_name="/use_sample")
    b.predict("clip2.mp4", api_name="/use_sample")
    results: dict[str, Any] = {}

    def run(name: str, c: Client, ratio: int) -> None:
        results[name] = [
            c.predict(ratio, 50, "unstructured", 0, 5, api_name="/mask_ratio_a")[-1]
            for _ in range(3)
        ]

    threads = [
        threading.Thread(target=run, args=("a", a, 25)),
        threading.Thread(target=run, args=("b", b, 75)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all("2/8 patches masked" in s for s in results["a"])
    assert all("6/8 patches masked" in s for s in results["b"])
    fresh = Client(app_url, verbose=False)  # a new session has no clip
    with pytest.raises(AppError, match="Choose a sample"):
        fresh.predict(3, "auto", True, api_name="/classify")


def test_every_public_endpoint_was_called(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    public = {name.lstrip("/") for name in api["named_endpoints"]}
    missing = public - CALLED
    assert not missing, f"endpoints without a gradio_client test: {sorted(missing)}"
