"""The training scale benchmark's harness: its trees, its recipes and command lines (as the
command reads them), its growth lines and estimate, and a quick real run of one path."""

from __future__ import annotations

import json

import pytest

from MammoPatchLib.cli import build_parser
from MammoPatchLib.training.recipe import TRAINS, Recipe
from benchmarks.bench_training_scale import (PATHS, QUICK, bench_recipe, growth, main, make_pool, markdown,
                                             select_images, shipped_recipe, train_arguments)


def test_sizes_are_the_first_images_of_one_tree(tmp_path):
    from MammoPatchLib.datasets import read_vindr

    pool = make_pool(tmp_path / "vindr", 6, (256, 208), 0.2, distinct=1)
    ids = [p["image_id"] for p in pool]
    assert len(set(ids)) == 6  # copies get ids of their own
    select_images(tmp_path / "vindr", pool, 5)
    records = read_vindr(tmp_path / "vindr")
    assert [r.image_id for r in records] == ids[:5]
    assert len({r.patient_id for r in records}) == 2 and {r.split for r in records} == {"training"}


@pytest.mark.parametrize("path", TRAINS)
def test_every_path_has_a_recipe_the_train_command_reads(tmp_path, path):
    file = tmp_path / f"bench-{path}.json"
    recipe = bench_recipe(path, file, 3, 64, "cpu")
    assert Recipe.load(file) == recipe and recipe.trains == path
    knob = PATHS[path][2]
    if knob:  # the shortened epochs, the rest as shipped
        assert getattr(recipe, knob) == 3 and getattr(shipped_recipe(path), knob) != 3
    assert recipe.epochs == (3 if path == "network" else shipped_recipe(path).epochs)
    args = build_parser().parse_args(train_arguments(file, tmp_path / "data", tmp_path / "out", tmp_path / "cache"))
    assert (args.command, args.config, args.cache) == ("train", str(file), str(tmp_path / "cache"))


def test_growth_lines_and_estimate(tmp_path, capsys):
    """Rows on known lines: the fit and the 20,000-image reading return them, also when the
    tables are made again from a saved run."""
    epoch_s, shipped = 40.0, shipped_recipe("stages")
    rows = [{"path": "stages", "images": n, "epochs": shipped.epochs + 1, "shortened_epochs": 1,
             "patches_per_epoch": 0, "cache_bytes": 1000 * n, "out_bytes": 5000, "peak_rss_bytes": 1e9 + 2e6 * n,
             "max_process_rss_bytes": 5e8 + 1e6 * n, "cached_images": cached, "caching_images_per_s": 0.5, "caching_s": 2 * cached,
             "training_s": 30 + 0.1 * n + epoch_s, "wall_s": 2 * cached + 30 + 0.1 * n + epoch_s}
            for n, cached in ((50, 50), (100, 50), (200, 100))]
    probe = {"cached_images": 0, "wall_s": rows[-1]["training_s"] + epoch_s}  # twice the epochs, nothing to cache
    g = growth(rows, probe, "stages", 20000)
    assert g["disk_bytes_per_image"] == pytest.approx(1000) and g["rss_bytes_per_100_images"] == pytest.approx(2e8)
    assert g["largest_process_bytes_per_100_images"] == pytest.approx(1e8)
    assert g["caching_s_per_image"] == pytest.approx(2) and g["epoch_s"] == pytest.approx(epoch_s)
    assert g["other_s_per_image"] == pytest.approx(0.1) and g["other_fixed_s"] == pytest.approx(30)
    e = g["estimate"]
    assert e["disk_bytes"] == pytest.approx(1000 * 20000 + 5000) and e["peak_rss_bytes"] == pytest.approx(4.1e10)
    assert e["largest_process_bytes"] == pytest.approx(2.05e10)
    assert e["hours_here"] == pytest.approx((2 * 20000 + 0.1 * 20000 + 30 + shipped.tail_epochs * epoch_s) / 3600)
    settings = {"device": "CPU", "torch": "x", "shape": [1, 1], "spacing_mm": 0.2, "epochs_run": 1,
                "patches_per_epoch": 0, "target_images": 20000}
    table = markdown({**settings, "results": rows, "growth": {"stages": g}})
    assert all(f"| stages | {n} |" in table for n in (50, 100, 200)) and f"{e['hours_here']:.1f} |" in table
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({**settings, "results": rows, "probes": {"stages": probe}}))
    assert main(["--tables-from", str(saved)])["growth"]["stages"] == g
    assert capsys.readouterr().out.strip() == table


def test_memory_and_other_seconds_come_from_the_run_alone():
    """Where each size also ran from its complete cache, memory and the seconds that are not
    caching are read from that run: the caching run holds the backbone too."""
    shipped = shipped_recipe("head")
    rows = [{"path": "head", "images": n, "epochs": shipped.epochs, "shortened_epochs": 1, "patches_per_epoch": 0,
             "cache_bytes": 1000 * n, "out_bytes": 0, "peak_rss_bytes": 9e9 + 5e7 * n,
             "max_process_rss_bytes": 8e9 + 5e7 * n, "cached_images": 50, "caching_images_per_s": 0.5,
             "caching_s": 100, "training_s": 1, "wall_s": 999 + n,
             "alone": {"wall_s": 20 + 0.5 * n, "peak_rss_bytes": 1e9 + 1e6 * n, "max_process_rss_bytes": 1e9,
                       "cached_images": 0}}
            for n in (50, 100, 200)]
    g = growth(rows, None, "head", 20000)
    assert g["rss_bytes_per_100_images"] == pytest.approx(1e8)
    assert g["largest_process_bytes_per_100_images"] == pytest.approx(0, abs=1e-3)
    assert g["other_s_per_image"] == pytest.approx(0.5) and g["other_fixed_s"] == pytest.approx(20)
    assert g["estimate"]["largest_process_bytes"] == pytest.approx(1e9)
    settings = {"device": "CPU", "torch": "x", "shape": [1, 1], "spacing_mm": 0.2, "epochs_run": 1,
                "patches_per_epoch": 0, "target_images": 20000}
    assert "| head | 100 | 0.1 | 0.0 | 13351 | 12398 | 50 | 0.50 | 1099.0 | 1049 | 954 | 70.0 | 28.57 |" in markdown(
        {**settings, "results": rows, "growth": {"head": g}})


@pytest.mark.slow
def test_quick_run_of_the_head_path(tmp_path, capsys):
    """The real command line, measured, at both quick sizes (the other paths train the same
    way with a costlier command; their recipes and arguments are checked above)."""
    report = main(["--quick", "--paths", "head", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]
    rows = {r["images"]: r for r in report["results"]}
    assert sorted(rows) == QUICK["sizes"]
    for n, row in rows.items():
        assert f"| head | {n} |" in table
        for key in ("wall_s", "training_s", "caching_images_per_s", "cache_bytes", "out_bytes", "peak_rss_bytes",
                    "max_process_rss_bytes"):
            assert row[key] > 0, (n, key)
        assert row["alone"]["cached_images"] == 0 and row["alone"]["max_process_rss_bytes"] > 0
    small, large = (rows[n] for n in QUICK["sizes"])
    assert (small["cached_images"], large["cached_images"]) == (small["images"], large["images"] - small["images"])
    assert large["cache_bytes"] > small["cache_bytes"]  # the cache grows with the images
    assert report["growth"]["head"]["estimate"]["hours_here"] > 0
