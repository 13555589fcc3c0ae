"""Fuzz: 1,000 seeded mutations of a valid COCO file and of a predictions file.

Each mutated file goes through ``detrkit data check`` (with images), ``detrkit eval`` and the
dataset loader (:class:`~detrkit.data.dataset.CocoDetection`, every item). Every call must end as
a user would want: exit 0/1/2, at most one ``error:`` line, never a traceback (in-process: no
exception but :class:`~detrkit.errors.DetrkitError` escapes, whose message is one line).

Mutations: a value replaced by another type, a NaN/inf/negative/huge number, a key deleted, an id
duplicated, a list wrapped in a mapping (wrong nesting), a non-UTF-8 byte, truncated JSON text.
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detrkit.cli.main import main
from detrkit.data.dataset import CocoDetection
from detrkit.errors import DetrkitError

N_MUTATIONS = 1000
CLI_EVERY = 20  # every 20th mutation also goes through the real entry point (main())
REPLACEMENTS: list[Any] = [
    None, True, "", "x", "\u00e9\u00e8", [], {}, [1, 2], {"a": 1}, 0, -1, -7.5, 10**30, 1e308,
    float("nan"), float("inf"), float("-inf"), 3.5, [float("nan")] * 4, [-5, -5, -1, -1], [0, 0, 0, 0],
    [1e30, 1e30, 1e30, 1e30], ["a", "b", "c", "d"], [1, 2, 3],
]  # fmt: skip


def _valid_gt(images_dir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        w, h = 48 + 8 * i, 40
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images_dir / f"im{i}.jpg")
        images.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": w, "height": h})
        for j in range(2):
            anns.append({"id": 2 * i + j + 1, "image_id": i + 1, "category_id": 1 + j, "bbox": [2 + j, 3, 20, 15],
                         "area": 300.0, "iscrowd": 0, "segmentation": [[2, 3, 22, 3, 22, 18, 2, 18]]})  # fmt: skip
    cats = [{"id": 1, "name": "circle", "supercategory": "shape"}, {"id": 2, "name": "square"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _valid_preds() -> list[dict[str, Any]]:
    return [
        {"image_id": 1 + i % 3, "category_id": 1 + i % 2, "bbox": [2.0 + i, 3.0, 20.0, 15.0], "score": 0.9 - 0.05 * i}
        for i in range(8)
    ]  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def mutate(doc: Any, rng: random.Random) -> bytes:
    """One to three random mutations of a JSON document, serialised (possibly corrupted) bytes."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths)
        kind = rng.choice(["replace", "replace", "delete", "duplicate", "nest", "number"])
        if not path:  # the top level itself
            doc = rng.choice([[doc], {"data": doc}, "text", 7, None]) if kind != "duplicate" else doc
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        value = parent[key]
        if kind == "replace":
            parent[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
        elif kind == "delete":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(value))  # duplicate ids, images, annotations
        elif kind == "nest":
            parent[key] = {"items": value} if isinstance(value, list) else [value]
        elif kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            parent[key] = rng.choice([-value, value * 1e12, math.nan, -math.inf, value + 0.5, -1])
        else:
            parent[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
    text = json.dumps(doc, allow_nan=True).encode()
    corrupt = rng.random()
    if corrupt < 0.05:
        return text[: rng.randint(0, max(0, len(text) - 1))]  # truncated file
    if corrupt < 0.10:
        cut = rng.randint(0, len(text))
        return text[:cut] + b"\xff\xfe" + text[cut:]  # not UTF-8
    return text


def _cli(args: list[str]) -> tuple[int, str]:
    """Run the real ``detrkit`` entry point in-process; (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    return code, err.getvalue()


def _one_line_user_error(err: BaseException) -> bool:
    return isinstance(err, DetrkitError) and "\n" not in str(err)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    gt = _valid_gt(root / "images")
    (root / "gt.json").write_text(json.dumps(gt))
    return root, gt


def _check_outcome(label: str, code: int, err: str, failures: list[str]) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code not in (0, 1, 2) or "Traceback" in err or len(errors) > 1:
        failures.append(f"{label}: exit {code}, stderr {err[-300:]!r}")


def _library(label: str, call: Any, failures: list[str]) -> str:
    """What the command does in-process: only a one-line DetrkitError may escape."""
    try:
        call()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - anything else is a traceback for the user
        if not _one_line_user_error(exc):
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        return "error"


def test_mutated_coco_files_through_check_eval_and_loader(world: tuple[Path, dict[str, Any]]) -> None:
    from detrkit.data.check import check_dataset
    from detrkit.data.coco import CocoIndex
    from detrkit.evaluation.coco import evaluate_coco

    root, gt = world
    rng = random.Random(1234)
    failures: list[str] = []
    preds = root / "preds.json"
    preds.write_text(json.dumps(_valid_preds()))
    outcomes: dict[str, int] = {}
    for i in range(N_MUTATIONS):
        path = root / "mutated.json"
        path.write_bytes(mutate(gt, rng))

        def load_all(path: Path = path) -> None:
            ds = CocoDetection(path, root / "images", transforms=None)
            for j in range(len(ds)):
                ds[j]

        for name, call in (
            ("check", lambda path=path: check_dataset(CocoIndex.load(path), root / "images", decode=False)),
            ("eval", lambda path=path: evaluate_coco(path, preds)),
            ("loader", load_all),
        ):
            key = f"{name} {_library(f'mutation {i} {name}', call, failures)}"
            outcomes[key] = outcomes.get(key, 0) + 1
        if i % CLI_EVERY == 0:  # the real entry point: exit status and stderr
            for args in (
                ["data", "check", "--ann", str(path), "--images", str(root / "images"), "--json"],
                ["eval", "--gt", str(path), "--pred", str(preds), "--json"],
            ):
                code, err = _cli(args)
                _check_outcome(f"mutation {i} {args[0]}", code, err, failures)
    assert failures == [], f"{len(failures)} failures, first: " + "\n".join(failures[:8])
    # the mutations bite, but not every one: both outcomes are common for each consumer
    assert all(outcomes.get(f"{n} {o}", 0) > 50 for n in ("check", "eval", "loader") for o in ("ok", "error"))


def test_mutated_prediction_files_through_eval(world: tuple[Path, dict[str, Any]]) -> None:
    from detrkit.evaluation.coco import evaluate_coco

    root, _ = world
    rng = random.Random(99)
    failures: list[str] = []
    outcomes: dict[str, int] = {}
    for i in range(N_MUTATIONS):
        path = root / f"preds_{i % 2}.json"
        path.write_bytes(mutate(_valid_preds(), rng))
        key = _library(f"mutation {i}", lambda path=path: evaluate_coco(root / "gt.json", path), failures)
        outcomes[key] = outcomes.get(key, 0) + 1
        if i % CLI_EVERY == 0:
            code, err = _cli(["eval", "--gt", str(root / "gt.json"), "--pred", str(path), "--json"])
            _check_outcome(f"mutation {i} eval", code, err, failures)
    assert failures == [], f"{len(failures)} failures, first: " + "\n".join(failures[:8])
    assert outcomes.get("ok", 0) > 20 and outcomes.get("error", 0) > 500
