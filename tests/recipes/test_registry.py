"""Model registry: register a bundle -> alias it -> `ispdc handoff --from-registry` rebuilds it byte-identical."""
from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from recipes.cli import main
from recipes.registry import DIGEST_TAG, RegistryError, bundle_digest, parse_ref

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixture import build_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def test_parse_ref() -> None:
    assert parse_ref("isp@approved") == ("isp", "approved", None)
    assert parse_ref("isp/3") == ("isp", None, "3")
    assert parse_ref("isp") == ("isp", None, None)
    with pytest.raises(RegistryError, match="NAME@ALIAS"):
        parse_ref("isp@1x y")


@pytest.mark.slow
def test_register_alias_and_rebuild_from_registry(tiny_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = ["--tracking-uri", uri]
    assert main(["register", str(tiny_bundle), "--name", "tiny-isp", "--alias", "candidate", *store]) == 0
    assert "tiny-isp version 1 (alias candidate)" in capsys.readouterr().out
    assert main(["register", str(tiny_bundle), "--name", "tiny-isp", *store]) == 0
    assert main(["alias", "tiny-isp", "1", "approved", *store]) == 0

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("tiny-isp", "approved")
    assert str(version.version) == "1"
    card = json.loads((tiny_bundle / "model_card.json").read_text())
    assert version.tags["card.input.layout"] == "NHWC" and version.tags["card.input.shape"] == json.dumps(
        card["input"]["shape"])
    assert version.tags[DIGEST_TAG] == bundle_digest(tiny_bundle)
    assert version.description.startswith("# tiny: RAW Bayer -> sRGB")  # the bundle README, from the card

    dest = tmp_path / "from_registry"
    assert main(["handoff", "--from-registry", "tiny-isp@approved", str(dest), *store]) == 0
    assert "OK" in capsys.readouterr().out  # the bundle's own golden check
    names = sorted(p.name for p in tiny_bundle.iterdir())
    assert sorted(p.name for p in dest.iterdir()) == names
    match, mismatch, errors = filecmp.cmpfiles(tiny_bundle, dest, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)

    # the pyfunc runs the bundle's TFLite model on packed RAW, NHWC or NCHW
    model = mlflow.pyfunc.load_model("models:/tiny-isp@candidate")
    golden_in, golden_out = np.load(tiny_bundle / "golden_input.npy"), np.load(tiny_bundle / "golden_output.npy")
    np.testing.assert_allclose(model.predict(golden_in), golden_out, atol=1e-5)
    nchw = model.predict(np.transpose(golden_in, (0, 3, 1, 2)))
    np.testing.assert_allclose(np.transpose(nchw, (0, 2, 3, 1)), golden_out, atol=1e-5)


@pytest.mark.slow
def test_registry_bad_input_is_one_line_exit_2(tiny_bundle: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = ["--tracking-uri", uri]
    assert main(["register", str(tmp_path), "--name", "x", *store]) == 2
    assert "not a hand-off bundle" in capsys.readouterr().err
    assert main(["register", str(tiny_bundle), "--name", "x", "--tracking-uri", str(tmp_path / "folder")]) == 2
    assert "needs a database store or a server" in capsys.readouterr().err
    assert main(["register", str(tiny_bundle), "--name", "tiny", *store]) == 0
    assert main(["alias", "tiny", "7", "approved", *store]) == 2
    assert "tiny version 7" in capsys.readouterr().err
    assert main(["handoff", "--from-registry", "tiny@approved", str(tmp_path / "d"), *store]) == 2
    assert "tiny@approved" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["handoff", "--from-registry", "tiny/1", str(tmp_path / "full"), *store]) == 2
    assert "not an empty folder" in capsys.readouterr().err
