"""``detrkit synth`` from the command line: files written, JSON summary, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from detrkit.cli.main import app


def test_synth_copy_paste_json(synth_cmd, tmp_path) -> None:
    args = synth_cmd(
        tmp_path / "o",
        "--classes",
        "disc",
        "box",
        "--per-class",
        "2",
        "--seed",
        "4",
        "--format",
        "png",
        "--json",
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["classes"] == ["disc", "box"] and summary["per_class"] == {"disc": 2, "box": 2}
    coco = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert len(coco["images"]) == 4 and all(
        (tmp_path / "o" / "images" / im["file_name"]).is_file() for im in coco["images"]
    )
    meta = json.loads((tmp_path / "o" / "metadata.json").read_text())
    assert meta["params"]["seed"] == 4 and meta["method"] == "copy-paste"


def test_synth_comma_list_and_augment(synth_cmd, tmp_path) -> None:
    args = synth_cmd(
        tmp_path / "a", "--per-class", "1", "--json", "--method", "augment", "--classes", "disc,box"
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["classes"] == ["disc", "box"]
    assert json.loads((tmp_path / "a" / "metadata.json").read_text())["method"] == "augment"


def _main(args: list[str], capsys) -> tuple[int, str]:
    """Run the real entry point (error handling included) in-process."""
    import pytest

    from detrkit.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code), capsys.readouterr().err


def test_synth_user_errors_exit_2_with_one_line(solid_dataset, synth_cmd, tmp_path, capsys) -> None:
    ann, images = solid_dataset
    cmd = synth_cmd(tmp_path / "x", "--classes", "dsic")
    code, err = _main(cmd, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {ann}: no class named 'dsic' (did you mean 'disc'?)"]
    cmd[cmd.index("dsic")] = "empty"
    cmd[cmd.index(str(images))] = str(tmp_path / "missing")
    code, err = _main(cmd, capsys)
    assert code == 2 and "images folder not found" in err and len(err.strip().splitlines()) == 1
    diffusion = synth_cmd(
        tmp_path / "x",
        "--classes",
        "disc",
        "--method",
        "diffusion",
        "--model",
        str(tmp_path),
        "--device",
        "cpu",
    )
    code, err = _main(diffusion, capsys)
    assert code == 2 and "cannot load an inpainting pipeline" in err and len(err.strip().splitlines()) == 1
