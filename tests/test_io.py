import os

import numpy as np
import pytest
from PIL import Image

from bccdet.io import InputError, array_to_rgb8, atomic_dir, read_image, write_text_atomic


def test_missing_dir_empty_text(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="0 bytes"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "text.jpg")


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(p, quality=90)
    data = p.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "cut.jpg")


def test_modes_become_rgb8(tmp_path):
    g = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    a = read_image(tmp_path / "g.png")
    assert a.shape == (16, 64, 3) and a.dtype == np.uint8 and np.array_equal(a[..., 0], g)

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = read_image(tmp_path / "a.png")
    assert tuple(a[0, 0]) == (200, 0, 0) and tuple(a[15, 15]) == (255, 255, 255)

    g16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) % 100 * 600).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    a = read_image(tmp_path / "g16.png")
    assert a.dtype == np.uint8 and a.max() == round(99 * 600 / 65535 * 255)


def test_exif_rotation_applied(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # w=40, h=20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when shown
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").shape[:2] == (40, 20)


def test_huge_image_refused_without_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (20000, 20000)).save(p, optimize=False)
    with pytest.raises(InputError, match="above the"):
        read_image(p)


def test_images_too_small_to_show_a_cell_are_refused(tmp_path):
    import tifffile

    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "t.png")
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((15, 200, 3), np.uint16))
    for f in ("t.png", "t.tif"):
        with pytest.raises(InputError, match="below the 16 px minimum side"):
            read_image(tmp_path / f)
    Image.fromarray(np.zeros((16, 28, 3), np.uint8)).save(tmp_path / "ok.png")  # 28 px thumbnails still read
    assert read_image(tmp_path / "ok.png").shape == (16, 28, 3)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as d:
            (d / "half.json").write_text("{")
            raise RuntimeError("killed")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with atomic_dir(tmp_path / "out") as d:
        (d / "ok.txt").write_text("1")
    assert (tmp_path / "out" / "ok.txt").read_text() == "1"
    write_text_atomic(tmp_path / "x" / "r.json", "{}")
    assert (tmp_path / "x" / "r.json").read_text() == "{}"
    assert not [p for p in os.listdir(tmp_path / "x") if p.endswith(".tmp")]


def test_array_to_rgb8_modes():
    from bccdet.io import array_to_rgb8

    g = np.full((4, 5), 128, np.uint8)
    assert array_to_rgb8(g).shape == (4, 5, 3) and (array_to_rgb8(g) == 128).all()
    assert array_to_rgb8(g[..., None]).shape == (4, 5, 3)
    assert (array_to_rgb8(np.full((4, 5, 3), 65535, np.uint16)) == 255).all()
    assert (array_to_rgb8(np.full((4, 5, 3), 0.5, np.float32)) == 128).all()
    rgba = np.zeros((4, 5, 4), np.uint8)  # fully transparent black -> white, as read_image composites
    assert (array_to_rgb8(rgba) == 255).all()
    with pytest.raises(ValueError):
        array_to_rgb8(np.zeros((0, 5, 3), np.uint8))


def test_atomic_outputs_get_the_mode_a_plain_open_gives(tmp_path):
    """Outputs written through a temporary file must not stay 0600 (colleagues, web servers could not read them)."""
    import os

    from bccdet.io import atomic_dir, write_text_atomic

    old = os.umask(0o022)
    os.umask(old)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~old
    (tmp_path / "plain_dir").mkdir()
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777


def test_image_files_follow_symlinked_folders_without_looping(tmp_path):
    """Labs link data into a working folder; Path.rglob (Python < 3.13) does not enter symlinked folders."""
    from bccdet.io import image_files

    real = tmp_path / "real" / "Patient_1" / "Lymphocyte"
    real.mkdir(parents=True)
    for n in ("a.png", "b.JPG", "notes.txt", ".hidden.png"):
        (real / n).write_bytes(b"x")
    work = tmp_path / "work"
    work.mkdir()
    (work / "Patient_1").symlink_to(tmp_path / "real" / "Patient_1", target_is_directory=True)
    (real / "loop").symlink_to(tmp_path / "real", target_is_directory=True)  # a cycle
    got = image_files(work)
    assert [p.name for p in got] == ["a.png", "b.JPG"]
    assert all(str(p).startswith(str(work)) for p in got)


def test_12_bit_data_in_16_bit_files_is_scaled_by_its_bit_depth(tmp_path):
    import tifffile

    from bccdet.io import check_out_dir

    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    rgb[0, 0] = 255  # full white present, as on a real field's background
    tifffile.imwrite(tmp_path / "c12.tif", rgb.astype(np.uint16) * 16)  # 12-bit camera data, max 4080
    a = read_image(tmp_path / "c12.tif")
    assert np.abs(a.astype(int) - rgb).max() <= 1  # not scaled by 65535 (nearly black: 0 cells found)
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 16).save(tmp_path / "g12.png")
    assert np.abs(read_image(tmp_path / "g12.png")[..., 0].astype(int) - rgb[..., 1]).max() <= 1
    assert np.abs(array_to_rgb8(rgb.astype(np.uint16) * 16).astype(int) - rgb).max() <= 1
    full = rgb.astype(np.uint16) * 257  # true 16-bit data keeps its scale
    tifffile.imwrite(tmp_path / "c16.tif", full)
    assert np.array_equal(read_image(tmp_path / "c16.tif"), rgb)

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_out_dir(f)
    with pytest.raises(InputError, match="cannot write there"):
        check_out_dir(f / "sub")
    assert check_out_dir(tmp_path / "new" / "out").is_dir()


def test_a_non_image_jpg_gives_pillows_reason_after_ultralytics_is_imported(tmp_path):
    import importlib

    importlib.import_module("ultralytics.utils.patches")  # replaces PIL.Image.open with a HEIF-installing wrapper

    (tmp_path / "notimage.jpg").write_text("hello, not a picture\n" * 20)
    with pytest.raises(InputError, match="cannot identify image file"):
        read_image(tmp_path / "notimage.jpg")
