"""Model zoo registry: completeness against OFFICIAL_CAVMAE.md §7, configs, and resolution
(downloads from a local HTTP server on 127.0.0.1, never the internet)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cavmae import zoo
from cavmae.config import ModelConfig
from cavmae.errors import CheckpointError, ConfigError, DownloadError
from cavmae.labels import LabelSet

DROPBOX = re.compile(r"https://www\.dropbox\.com/s/[0-9a-z]+/[^\s?]+\?dl=1")


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


@pytest.fixture(scope="module")
def spec(shared_labels: Path) -> str:
    path = shared_labels.parent / "OFFICIAL_CAVMAE.md"
    if not path.is_file():
        pytest.skip("OFFICIAL_CAVMAE.md is absent")
    return path.read_text(encoding="utf-8")


def test_registry_holds_every_published_checkpoint(spec: str) -> None:
    published = set(DROPBOX.findall(_section(spec, "### 7.1", "### 7.3")))
    assert {e.url for e in zoo.list_models()} == published
    in_initial = DROPBOX.findall(_section(spec, "### 3.3", "### 3.4"))
    assert zoo.get("in-initial").url in in_initial


def test_label_set_urls_come_from_the_spec(spec: str) -> None:
    lists = _section(spec, "### 7.4", "## 8.")
    urls = {u for u in DROPBOX.findall(lists) if "class_labels_indices" in u}
    assert {s.url for s in zoo.LABEL_SETS.values()} == urls
    assert {s.name: s.num_classes for s in zoo.LABEL_SETS.values()} == {
        "audioset": 527,
        "vggsound": 309,
    }


def test_entries_are_consistent() -> None:
    entries = zoo.list_models()
    assert len(entries) == len({e.name for e in entries}) == 24  # 15 pretrained + IN-initial + 8 FT
    kinds = [e.kind for e in entries]
    assert kinds.count("pretrain") == 16 and kinds.count("finetune") == 8
    for e in entries:
        assert e.name == e.name.lower() and " " not in e.name
        assert DROPBOX.fullmatch(e.url) and e.url.split("/")[-1] == f"{e.filename}?dl=1"
        assert ModelConfig.from_dict(e.model_config.to_dict()) == e.model_config
        assert e.model_config.embed_dim == 768 and e.model_config.modality_specific_depth == 11
        if e.kind == "pretrain":
            assert e.model_config.is_pretrain and e.label_set is None and e.mode is None
            assert e.model_config.norm_pix_loss == e.norm_pix_loss and not e.model_config.tr_pos
        else:
            assert e.model_config.label_dim == zoo.LABEL_SETS[e.label_set].num_classes
            assert e.model_config.tr_pos and e.mode in ("multimodal", "audioonly", "videoonly")
            assert e.metric and e.multi_label == (e.label_set == "audioset")
    assert zoo.get("cav-mae-base-nonorm").norm_pix_loss is False
    assert zoo.get("cav-mae-scale++").norm_pix_loss is True
    assert zoo.get("cav-mae-ft-as2m").metric == "51.2 mAP (AS-2M)"
    assert zoo.get("cav-mae-ft-as20k-visual").mode == "videoonly"
    assert zoo.get("CAV-MAE-Scale++") is zoo.ZOO["cav-mae-scale++"]


def test_zoo_configs_build_the_official_key_sets(fixtures_dir: Path) -> None:
    from cavmae.models import build_model

    full = json.loads((fixtures_dir / "keys_full.json").read_text())["models"]
    expected = {
        name: [(k.removeprefix("module."), s) for k, s in m["keys"]] for name, m in full.items()
    }
    names = {None: "CAVMAE()", 527: "CAVMAEFT(label_dim=527)", 309: "CAVMAEFT(label_dim=309)"}
    for cfg in {e.model_config.replace(norm_pix_loss=False) for e in zoo.list_models()}:
        with torch.device("meta"):
            sd = build_model(cfg).state_dict()
        assert [(k, list(v.shape)) for k, v in sd.items()] == expected[names[cfg.label_dim]]


def test_unknown_name_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean cav-mae-base"):
        zoo.get("cav-mae-bse")
    with pytest.raises(CheckpointError, match="did you mean demo"):
        zoo.resolve("dem")


def test_resolve_paths_and_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"x")
    assert zoo.resolve(f) == f and zoo.resolve(str(f)) == f
    with pytest.raises(CheckpointError, match="neither an existing file nor a known model name"):
        zoo.resolve(tmp_path / "missing.pth")
    monkeypatch.setitem(zoo.BUNDLED, "demo", tmp_path / "assets" / "demo.safetensors")
    with pytest.raises(
        CheckpointError, match=r"bundled model 'demo' is missing.*demo\.safetensors"
    ):
        zoo.resolve("demo")
    monkeypatch.setitem(zoo.BUNDLED, "demo", f)
    assert zoo.resolve("demo") == f
    assert set(zoo.BUNDLED) >= {"demo", "demo-pretrain"}


def test_resolve_without_download(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"not in the cache.*l5t5geufdy3qvnv"):
        zoo.resolve("cav-mae-scale++", cache_dir=tmp_path, download=False)
    assert (
        zoo.model_path("cav-mae-scale++", tmp_path)
        == tmp_path / "models" / "cav-mae-scale++" / "audio_model.21.pth"
    )


# --- downloads from a local server --------------------------------------------------------


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_zoo_name_downloads_model_and_labels_then_loads(
    file_server: tuple[str, Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fixtures_dir: Path,
) -> None:
    from cavmae.checkpoint import load_checkpoint

    base, root, hits = file_server
    parity: dict[str, Any] = torch.load(fixtures_dir / "parity_a.pt", weights_only=True)
    torch.save(parity["ft_state_dict"], root / "tiny.pth")
    labels = LabelSet(
        tuple(f"sound {i}, loud" for i in range(7)), tuple(f"/m/t{i}" for i in range(7))
    )
    labels.to_csv(root / "tiny.csv")
    monkeypatch.setitem(
        zoo.LABEL_SETS, "tiny", zoo.LabelSource("tiny", f"{base}/tiny.csv", "tiny.csv", 7)
    )
    entry = dataclasses.replace(
        zoo.get("cav-mae-ft-as2m-audio"),
        name="tiny-ft",
        url=f"{base}/tiny.pth?dl=1",
        filename="tiny.pth",
        model_config=ModelConfig(**parity["ft_config"], tr_pos=True),
        label_set="tiny",  # type: ignore[arg-type]
    )
    monkeypatch.setitem(zoo.ZOO, "tiny-ft", entry)
    progress: list[tuple[int, int | None]] = []

    cache = tmp_path / "cache"
    path = zoo.resolve("tiny-ft", cache_dir=cache, progress=lambda d, t: progress.append((d, t)))
    assert path == cache / "models" / "tiny-ft" / "tiny.pth"
    assert path.read_bytes() == (root / "tiny.pth").read_bytes()
    assert (cache / "labels" / "tiny.csv").is_file()
    assert progress[-1][0] == progress[-1][1]
    assert sorted(hits) == ["/tiny.csv", "/tiny.pth?dl=1"]

    loaded = load_checkpoint("tiny-ft", cache_dir=cache, download=False)  # cached: no new requests
    assert len(hits) == 2
    assert loaded.labels == labels and loaded.mode == "audioonly" and loaded.multi_label is False
    assert loaded.meta["zoo"] == "tiny-ft" and loaded.meta["metrics"] == {"reported": entry.metric}
    assert loaded.config == entry.model_config  # num_heads came from the zoo entry
    with torch.no_grad():
        out = loaded.model(parity["inputs"]["audio"], parity["inputs"]["imgs"], "audioonly")
    torch.testing.assert_close(out, parity["ft_outputs"]["audioonly"], atol=1e-5, rtol=1e-5)


def test_zoo_download_error_leaves_no_file(
    file_server: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _, _ = file_server
    entry = dataclasses.replace(zoo.get("cav-mae-base"), url=f"{base}/gone.pth?dl=1")
    monkeypatch.setitem(zoo.ZOO, "cav-mae-base", entry)
    with pytest.raises(DownloadError, match="HTTP 404"):
        zoo.resolve("cav-mae-base", cache_dir=tmp_path)
    assert not zoo.model_path("cav-mae-base", tmp_path).exists()


def test_load_labels_checks_class_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labels").mkdir()
    LabelSet.generic(5).to_csv(tmp_path / "labels" / "class_labels_indices_vgg.csv")
    with pytest.raises(ConfigError, match="5 classes but the vggsound label set has 309"):
        zoo.load_labels("vggsound", cache_dir=tmp_path, download=False)
    with pytest.raises(ConfigError, match="unknown label set"):
        zoo.resolve_labels("esc50", cache_dir=tmp_path)


def test_web_page_instead_of_checkpoint_is_rejected(
    file_server: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root, _ = file_server
    (root / "page.html").write_text("<!DOCTYPE html><html><body>Dropbox - Error</body></html>")
    entry = dataclasses.replace(zoo.get("cav-mae-base"), url=f"{base}/page.html")
    monkeypatch.setitem(zoo.ZOO, "cav-mae-base", entry)
    with pytest.raises(DownloadError, match="returned a web page"):
        zoo.resolve("cav-mae-base", cache_dir=tmp_path)
    assert not zoo.model_path("cav-mae-base", tmp_path).exists()
