"""task=vision: IDX reading, the ViT against a convolution, augmentation, an image folder through the command line."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bigbatch.data import images
from bigbatch.errors import UserError
from bigbatch.nn.models import ViT, default_patch
from helpers import run_cli as cli


def _idx(path, array: np.ndarray):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_big_endian_header(tmp_path):
    a = np.arange(2 * 3 * 300, dtype=np.int64).reshape(2, 3, 300) % 251  # a size > 255: the header is big-endian
    _idx(tmp_path / "x.gz", a)
    got = images.read_idx(tmp_path / "x.gz")
    assert got.shape == (2, 3, 300) and np.array_equal(got, a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(UserError, match="not an IDX file of unsigned bytes"):
        images.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(UserError, match="header says"):
        images.read_idx(tmp_path / "short")


def test_vit_patch_embedding_is_a_strided_convolution():
    torch.manual_seed(0)
    m = ViT(image_size=12, channels=3, patch_size=4, num_classes=5, d_model=32, n_heads=4, n_layers=1)
    x = torch.randint(0, 256, (2, 12, 12, 3), dtype=torch.uint8)
    conv = torch.nn.Conv2d(3, 32, 4, stride=4)
    # our patch vector is (row, col, channel) ordered; a conv weight is (out, channel, row, col)
    conv.weight.data = m.patch.weight.detach().reshape(32, 4, 4, 3).permute(0, 3, 1, 2).clone()
    conv.bias.data = m.patch.bias.detach().clone()
    scaled = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    expected = conv(scaled).flatten(2).transpose(1, 2)  # (B, 9 patches, 32), row-major patches
    assert torch.allclose(m.patch(m.patches(x)), expected, atol=1e-5)
    assert m(x).shape == (2, 5)
    assert torch.allclose(m(x), m(x.float() / 255.0), atol=1e-5)  # uint8 and [0, 1] floats read alike
    with pytest.raises(ValueError, match="the model reads 12x12x3"):
        m(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    assert [default_patch(n) for n in (8, 28, 32, 224)] == [2, 4, 4, 32]


def test_conv_stem_reads_the_image_and_keeps_the_grid():
    torch.manual_seed(0)
    m = ViT(image_size=16, channels=3, patch_size=4, num_classes=5, d_model=32, n_heads=4, n_layers=1,
            patch_embed="conv").eval()
    x = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    seen = {}
    m.stem[0].register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0], out=out))
    grid = {}
    m.encoder.register_forward_hook(lambda mod, inp, out: grid.update(tokens=inp[0].shape))
    assert m(x).shape == (2, 5)
    assert torch.allclose(seen["inp"], x.permute(0, 3, 1, 2).float() / 127.5 - 1.0)  # the image itself, (B, C, H, W)
    assert seen["out"].shape == (2, 8, 8, 8) and grid["tokens"] == (2, 16, 32)  # 2 stride-2 convs: a 4x4 grid
    assert [type(layer).__name__ for layer in m.stem] == ["Conv2d", "GroupNorm", "ReLU"] * 4 + ["Conv2d"]
    assert [layer.stride[0] for layer in m.stem if isinstance(layer, torch.nn.Conv2d)] == [2, 1, 2, 1, 1]
    from bigbatch.config import ModelConfig

    with pytest.raises(UserError, match="power-of-2"):
        ModelConfig(image_size=12, patch_size=3, patch_embed="conv")
    assert default_patch(96, power_of_2=True) == 16 and default_patch(96) == 12


def test_vit_class_token_and_rope():
    m = ViT(image_size=8, channels=1, patch_size=2, num_classes=3, d_model=16, n_heads=2, n_layers=1, pool="cls")
    assert m.n_tokens == 17 and m(torch.zeros(2, 8, 8, 1, dtype=torch.uint8)).shape == (2, 3)
    r = ViT(image_size=8, channels=1, patch_size=2, num_classes=3, d_model=16, n_heads=2, n_layers=1, pos="rope",
            max_len=4)
    assert r.pos is None and r(torch.zeros(1, 8, 8, 1, dtype=torch.uint8)).shape == (1, 3)


def test_augmentation_crops_padded_images_and_flips_only_when_asked():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (64, 16, 16, 1)).astype(np.uint8)  # no zero pixel: padding shows as zeros
    assert images.augment_batch(x, rng, "none") is x
    a = images.augment_batch(x, np.random.default_rng(1), "crop")
    b = images.augment_batch(x, np.random.default_rng(1), "crop")
    assert np.array_equal(a, b) and a.shape == x.shape  # the same generator, the same crops
    pad = 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(64):  # each output is a 16x16 window of its own padded image
        windows = [padded[i, dy : dy + 16, dx : dx + 16] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(a[i], w) for w in windows)
    assert not np.array_equal(a, x)
    flipped = images.augment_batch(x, np.random.default_rng(2), "crop_flip")
    mirrored = sum(any(np.array_equal(flipped[i], w[:, ::-1]) and not np.array_equal(w, w[:, ::-1])
                       for w in [padded[i, dy : dy + 16, dx : dx + 16] for dy in range(5) for dx in range(5)])
                   for i in range(64))
    assert 16 < mirrored < 48  # about half
    with pytest.raises(UserError, match="expected none, crop or crop_flip"):
        images.augment_batch(x, rng, "rotate")


def test_to_pixels_resizes_shorter_side_and_centre_crops(tmp_path):
    im = np.zeros((20, 40, 3), dtype=np.uint8)
    im[:, 6:34] = 255  # white beyond the centre 20 columns: after the crop, all white (but for filter ringing)
    Image.fromarray(im).save(tmp_path / "wide.png")
    Image.fromarray(im).convert("RGBA").save(tmp_path / "rgba.png")
    for name in ("wide.png", "rgba.png"):
        out = images.to_pixels({"path": str(tmp_path / name)}, 10, 3)
        assert out.shape == (10, 10, 3) and out.min() >= 240
    grey = images.to_pixels({"path": str(tmp_path / "wide.png")}, 10, 1)
    assert grey.shape == (10, 10, 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="not a readable image"):
        images.to_pixels({"path": str(tmp_path / "broken.png")}, 10, 3)


def _shapes_folder(root, n_per_class=60, seed=0):
    """Three classes a model can tell apart, mirrored or not: a bright top half, bottom half, or a bright
    centre bar; images of several sizes and modes (grey, RGB, palette)."""
    rng = np.random.default_rng(seed)
    for cls in ("top", "bottom", "bar"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            size = int(rng.integers(16, 40))
            im = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            h = size // 2
            if cls == "top":
                im[:h] = 230
            elif cls == "bottom":
                im[h:] = 230
            else:
                im[:, size // 3 : 2 * size // 3] = 230
            mode = ("RGB", "L", "P")[i % 3]
            Image.fromarray(im).convert(mode).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("img") / "shapes"
    for split, n, seed in (("train", 80, 0), ("valid", 20, 1), ("test", 20, 2)):
        _shapes_folder(d / split, n_per_class=n, seed=seed)
    run = d.parent / "run"
    proc = cli("train", "--run-dir", run, "--no-progress", "--json", "--set", "task=vision",
               "--set", f"data.source={d}", "--set", "model.image_size=16", "--set", "model.d_model=32",
               "--set", "model.n_layers=2", "--set", "train.max_steps=80", "--set", "train.global_batch_size=32",
               "--set", "optim.lr=3e-3", "--set", "train.eval_every=0")
    return d, run, json.loads(proc.stdout)


def test_image_folder_trains_classifies_and_evaluates(vision_run):
    d, run, summary = vision_run
    cfg = (run / "config.yaml").read_text()
    assert "image_size: 16" in cfg and "patch_size: 2" in cfg and "channels: 3" in cfg and "augment: crop_flip" in cfg
    assert summary["valid_accuracy"] > 0.8
    assert summary["baseline"]["method"] == "pixels_logreg" and summary["baseline"]["split"] == "valid"
    img = d / "test" / "bar" / "0.png"
    out = json.loads(cli("classify", run, "--json", img).stdout)
    assert out["label"] == "bar" and 0.0 < out["p"] <= 1.0 and out["file"] == str(img)  # which file, with several
    line = cli("classify", run, d / "test" / "top" / "1.png").stdout.strip().split("\t")
    assert line[0] == "top" and 0.0 < float(line[1]) <= 1.0
    ev = json.loads(cli("eval", run, "--split", "test", "--json").stdout)
    assert ev["accuracy"] > 0.8 and "macro_f1" in ev and ev["examples"] == 60
    assert sum(map(sum, ev["confusion"])) == ev["examples"]
    assert sorted(ev["labels"]) == sorted(p.name for p in (d / "test").iterdir()) == ev["labels"]  # rows in order
    assert ev["baseline"]["method"] == "pixels_logreg" and "majority" in ev["baseline"]["methods"]
    png = run / "plots" / "confusion-test.png"
    assert ev["confusion_png"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    bad = cli("classify", run, d / "missing.png", check=False)
    assert bad.returncode == 2 and "missing.png" in bad.stderr


def test_image_shards_are_uint8_pixels_and_resume_exactly(vision_run):
    from bigbatch.config import load_config
    from bigbatch.data.pipeline import build_data
    from bigbatch.data.shards import read_manifest

    _, run, _ = vision_run
    cfg = load_config(run / "config.yaml")
    data = build_data(cfg, 8, progress=False)
    manifest = read_manifest(data.shard_dir)
    assert manifest["dtype"] == "uint8" and manifest["image"] == {"size": 16, "channels": 3}
    assert manifest["tokenizer"]["kind"] == "pixels"
    for _ in range(5):
        data.train.next_batch()
    state = data.train.state_dict()
    expected = [data.train.next_batch() for _ in range(3)]
    again = build_data(cfg, 8, progress=False).train
    again.load_state_dict(state)
    for want in expected:
        got = again.next_batch()
        assert torch.equal(got["pixels"], want["pixels"]) and torch.equal(got["labels"], want["labels"])
    assert want["pixels"].shape == (8, 16, 16, 3) and want["input_tokens"] == 8 * 64
    valid = data.loader("valid")  # evaluation batches are never augmented: the stored pixels themselves
    b = next(iter(valid.eval_batches()))
    s = valid.shards.shards[0]
    assert np.array_equal(b["pixels"][0].numpy().reshape(-1), s.read(0, 16 * 16 * 3))


def test_bad_images_and_empty_class_folders(tmp_path):
    d = _shapes_folder(tmp_path / "set", n_per_class=10)
    (d / "bar" / "oops.png").write_bytes(b"not an image at all")
    base = ["prepare", "--source", d, "--task", "vision", "--set", "model.image_size=8", "--out"]
    proc = cli(*base, tmp_path / "p1", check=False)
    assert proc.returncode == 2 and "oops.png" in proc.stderr and "not a readable image" in proc.stderr
    assert "Traceback" not in proc.stderr
    cli(*base, tmp_path / "p2", "--set", "data.skip_bad_rows=true")
    from bigbatch.data.shards import read_manifest

    manifest = read_manifest(tmp_path / "p2")
    assert manifest["skipped_rows"] == 1
    assert sum(manifest["splits"][s]["n_examples"] for s in ("train", "valid", "test")) == 30
    (d / "nothing_here").mkdir()
    proc = cli(*base, tmp_path / "p3", check=False)
    assert proc.returncode == 2 and "nothing_here: no images" in proc.stderr
    proc = cli("prepare", "--source", tmp_path / "nothing", "--task", "vision", "--out", tmp_path / "p4", check=False)
    assert proc.returncode == 2 and "nothing" in proc.stderr


def test_fixed_split_folders_and_fashion_mnist_layout(tmp_path, monkeypatch):
    """DIR/{train,test}/CLASS keeps its splits; the fashion-mnist builder reads IDX files (here small fakes)."""
    from bigbatch.config import Config, DataConfig, ModelConfig
    from bigbatch.data.pipeline import prepare_spec
    from bigbatch.data.prepare import prepare
    from bigbatch.data.shards import read_manifest

    _shapes_folder(tmp_path / "split" / "train", n_per_class=8)
    _shapes_folder(tmp_path / "split" / "test", n_per_class=3, seed=1)
    cfg = Config(task="vision", data=DataConfig(source=str(tmp_path / "split")), model=ModelConfig(image_size=8))
    m = read_manifest(prepare(prepare_spec(cfg), tmp_path / "shards", progress=False))
    assert m["splits"]["test"]["n_examples"] == 9  # the test/ folder, whole
    assert m["splits"]["train"]["n_examples"] + m["splits"]["valid"]["n_examples"] == 24
    assert m["splits"]["valid"]["n_examples"] > 0  # no valid/ folder: 5% of train/ held out by hash
    (tmp_path / "split" / "extra").mkdir()
    with pytest.raises(UserError, match="split folders .* and other folders"):
        prepare(prepare_spec(cfg), tmp_path / "shards2", progress=False)

    fake = tmp_path / "fmnist"
    fake.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 30)):
        _idx(fake / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(fake / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setattr(images, "FASHION_SYSTEM_DIR", fake)
    cfg = Config(task="vision", data=DataConfig(source="builtin:fashion-mnist"))
    from bigbatch.data.pipeline import resolve_before_data

    cfg = resolve_before_data(cfg)[0]
    assert (cfg.model.image_size, cfg.model.channels, cfg.data.augment) == (28, 1, "crop_flip")
    m = read_manifest(prepare(prepare_spec(cfg), tmp_path / "fm", progress=False))
    assert m["splits"]["test"]["n_examples"] == 30 and m["splits"]["valid"]["n_examples"] > 0
    assert sorted(m["labels"]) == sorted(images.FASHION_LABELS)
    wrong = Config(task="classify", data=DataConfig(source="builtin:fashion-mnist", tokenizer="byte"))
    with pytest.raises(UserError, match="set task=vision"):
        prepare(prepare_spec(wrong), tmp_path / "fm2", progress=False)


def test_digits_builtin():
    pytest.importorskip("sklearn")
    records = list(images.digits("vision"))
    assert len(records) == 1797
    splits = [r[images.FIXED_SPLIT] for _, r in records]
    assert 0.15 < splits.count("test") / 1797 < 0.25 and 0.05 < splits.count("valid") / 1797 < 0.15
    assert records[0][1]["pixels"].dtype == np.uint8 and max(r["pixels"].max() for _, r in records) == 255


def test_attention_rollout_matches_a_manual_product():
    from bigbatch.evaluate.attention_maps import attention_rollout, image_attention_maps

    torch.manual_seed(0)
    for pool in ("mean", "cls"):
        m = ViT(image_size=8, channels=1, patch_size=2, num_classes=3, d_model=16, n_heads=2, n_layers=3,
                pool=pool).eval()
        x = torch.randint(0, 256, (8, 8, 1), dtype=torch.uint8)
        maps = image_attention_maps(m, x)
        assert len(maps) == 3 and maps[0].weights.shape == (2, m.n_tokens, m.n_tokens)
        assert torch.allclose(maps[0].weights.sum(-1), torch.ones(2, m.n_tokens), atol=1e-5)
        eye = torch.eye(m.n_tokens, dtype=torch.float64)
        r = eye
        for mp in maps:
            a = 0.5 * mp.weights.double().mean(0) + 0.5 * eye
            r = (a / a.sum(-1, keepdim=True)) @ r
        want = r[0, 1:] if pool == "cls" else r.mean(0)
        got = attention_rollout(maps, pool == "cls")
        assert got.shape == (16,) and torch.allclose(got.double(), want / want.sum(), atol=1e-6)


@pytest.mark.slow
def test_attention_command_draws_rollout_over_an_image(vision_run, tmp_path):
    d, run, _ = vision_run
    out = tmp_path / "rollout.png"
    proc = cli("attention", run, d / "test" / "bar" / "2.png", "--out", out)
    assert "attention rollout over 64 patches" in proc.stdout and out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "x.png").write_bytes(b"junk")
    bad = cli("attention", run, tmp_path / "x.png", "--out", out, check=False)
    assert bad.returncode == 2 and "x.png" in bad.stderr
