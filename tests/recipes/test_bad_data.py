"""A corrupt image in a real-format dataset stops the run with one line naming the file, exit code 2."""
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from recipes.cli import main


def _paired_split(root: Path, split: str, corrupt: str | None = None) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        (root / split / "raw").mkdir(parents=True, exist_ok=True)
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / split / "raw" / f"{i}.png", rng.integers(0, 1023, (32, 32), dtype=np.uint16))
        iio.imwrite(root / split / "rgb" / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    if corrupt:
        (root / split / "rgb" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_corrupt_target_image_is_named_and_exits_2(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    _paired_split(data, "train", corrupt="1.png")
    _paired_split(data, "test")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: bad\ndata: {{kind: paired, root: {data}, patch_size: 8}}\nstudent: {{train: {{steps: 1}}}}\n"
    )
    code = main(["run", str(recipe), "--workdir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 2
    assert "1.png" in err and "Traceback" not in err
    assert not (tmp_path / "work" / "handoff").exists()
