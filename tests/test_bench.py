"""egmf-bench: the benchmark data, the reported ratios and the README table; the whole quick run is slow."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from egmf.cache.mmsa import load_pickle
from egmf.cache.reader import Cache
from egmf.pipeline.bench.cli import bench_app
from egmf.pipeline.bench.common import check
from egmf.pipeline.bench.report import (README_END, README_START, BenchConfig, markdown_table, run_benchmarks,
                                        update_readme)
from egmf.pipeline.bench.storage import MOSEI, read_probe, write_synthetic_mosei

runner = CliRunner()
ROWS = {"train": 5, "valid": 2, "test": 3}


@pytest.fixture(scope="module")
def mosei(tmp_path_factory):
    return write_synthetic_mosei(tmp_path_factory.mktemp("mosei"), ROWS, seed=1)


def test_synthetic_mosei_holds_the_same_features_in_every_format(mosei):
    data = load_pickle(mosei["pickle"])  # egmf's own MMSA importer accepts it
    cache = Cache.open(mosei["cache"])
    assert cache.split_counts() == {"train": 5, "dev": 2, "test": 3}
    train = cache.rows("train")
    for m, key in (("audio", "audio"), ("visual", "vision"), ("text", "text")):
        t, d = MOSEI[m]
        from_pickle = data["train"][key]
        assert from_pickle.shape == (5, t, d) and from_pickle.dtype == np.float32
        from_npy = np.load(mosei["npy"] / f"train_{m}.npy")
        lengths = np.load(mosei["npy"] / f"train_{m}_lengths.npy")
        from_cache, cache_lengths = cache.features(m, train)
        np.testing.assert_array_equal(from_npy, from_pickle.astype(np.float16))
        np.testing.assert_array_equal(from_cache, from_npy)
        np.testing.assert_array_equal(cache_lengths, lengths)
        steps = np.arange(t)[None, :] < lengths[:, None]  # (n, T)
        assert (from_pickle[~steps] == 0).all() and (np.abs(from_pickle[steps]).sum(-1) > 0).all()
        assert 1 <= lengths.min() and lengths.max() <= t
    assert data["train"]["audio_lengths"] == np.load(mosei["npy"] / "train_audio_lengths.npy").tolist()


def test_read_probes_read_the_same_rows_from_every_format(mosei):
    first = {fmt: read_probe(fmt, str(mosei[fmt if fmt != "zarr" else "cache"]), "train", 3)
             for fmt in ("pickle", "npy", "cache", "zarr")}
    whole = {fmt: read_probe(fmt, str(mosei[fmt if fmt != "copy" else "npy"]), "train", None)
             for fmt in ("npy", "cache", "copy")}
    float16_row = sum(t * d for t, d in MOSEI.values()) * 2
    assert {r["rows"] for r in first.values()} == {3}
    assert first["npy"]["bytes"] == first["cache"]["bytes"] == first["zarr"]["bytes"] == 3 * float16_row
    assert first["pickle"]["bytes"] == 2 * 3 * float16_row  # float32
    assert whole["npy"]["bytes"] == whole["cache"]["bytes"] == whole["copy"]["bytes"] == 5 * float16_row
    for r in (*first.values(), *whole.values()):
        assert r["seconds"] > 0 and r["peak_rss"] >= r["rss_before"] > 0


def test_check_compares_value_and_target():
    assert check("speed-up", 120.0, 100)["passed"] is True
    assert check("speed-up", 99.0, 100)["passed"] is False
    assert check("size", 0.5, 0.5, "<=")["passed"] is True
    assert check("growth", 0.15, 0.15, "<", "fraction")["passed"] is False
    assert check("memory", 3.0, None)["passed"] is None


def _report():
    machine = {"cores": 2, "cpu": "test cpu", "ram_gib": 24.0, "torch_threads": 2,
               "versions": {"torch": "2.14.1", "zarr": "3.1.6"}}
    bench = {"title": "Storage", "setup": "tiny", "date": "2026-01-02T00:00:00+00:00", "bound": ["zarr is slow."],
             "load_average": [0.5, 1.25],
             "checks": [check("scan, share of .npy's", 0.25, 0.5), check("size, share of the pickle's", 0.3, 0.5, "<="),
                        check("memory", 2.0, None)]}
    return {"machine": machine, "benchmarks": {"2": bench}}


def test_markdown_table_has_a_row_per_check_and_the_bounds_of_missed_targets():
    table = markdown_table(_report())
    rows = [line for line in table.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 3
    assert "0.25x" in rows[0] and "**missed**" in rows[0]
    assert "0.30x" in rows[1] and "met" in rows[1] and "reported" in rows[2]
    assert "zarr is slow." in table and "2 cores" in table and "2026-01-02" in table and "0.5 to 1.2" in table


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# EGMF\nintro\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, "| new |\n")
    update_readme(readme, "| newer |\n")  # regenerating twice gives the same layout
    assert readme.read_text() == f"# EGMF\nintro\n{README_START}\n| newer |\n{README_END}\nafter\n"
    (tmp_path / "other.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(tmp_path / "other.md", "| x |\n")


def test_cli_refuses_unknown_benchmarks(tmp_path):
    bad = runner.invoke(bench_app, ["--out", str(tmp_path), "--only", "2,9"])
    assert bad.exit_code == 1 and "numbered 1 to 6" in bad.output
    assert runner.invoke(bench_app, ["--only", "two"]).exit_code == 2


def test_cli_quick_storage_benchmark_writes_json_and_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\nkeep\n{README_END}\n")
    out = tmp_path / "results"
    res = runner.invoke(bench_app, ["--out", str(out), "--only", "2", "--quick", "--readme", str(readme),
                                    "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    assert report["quick"] is True and report["machine"]["cores"] >= 1 and list(report["benchmarks"]) == ["2"]
    b = report["benchmarks"]["2"]
    m = b["measured"]
    first, warm, copy, cold, size, memory = b["checks"]
    assert all(v > 0 for v in m["bytes_on_disk"].values())
    assert first["value"] == pytest.approx(m["first_batch"]["pickle"]["seconds"] / m["first_batch"]["cache"]["seconds"])
    assert warm["value"] == pytest.approx(m["scan"]["npy"]["seconds"] / m["scan"]["cache"]["seconds"])
    assert copy["value"] == pytest.approx(m["scan"]["copy"]["seconds"] / m["scan"]["cache"]["seconds"])
    assert copy["target"] is None and m["scan"]["copy"]["bytes"] == m["scan"]["cache"]["bytes"]
    codecs = m["codecs_per_core"]
    assert codecs["copy"]["size"] == 1 and "blosc lz4, no shuffle (the store's)" in codecs
    # every candidate drops the zero padding, so each is smaller than float16; all decode at some rate
    assert all(0 < c["size"] < 1 and c["decode_mb_per_second"] > 0 for k, c in codecs.items() if k != "copy")
    from_disk = m["scan_from_disk"]
    assert cold["value"] == pytest.approx(from_disk["npy"]["seconds"] / from_disk["cache"]["seconds"])
    assert size["value"] == pytest.approx(m["bytes_on_disk"]["cache"] / m["bytes_on_disk"]["pickle"])
    assert size["value"] < 0.5 and size["passed"] is True  # float16 and compressed padding: true at any size
    assert memory["target"] is None and memory["passed"] is None
    assert m["scan"]["cache"]["rows"] == m["scan"]["npy"]["rows"] == 96
    assert (out / "README-table.md").read_text() in res.output
    assert readme.read_text() == f"{README_START}\nkeep\n{README_END}\n"  # a quick run leaves the README alone
    assert not list(tmp_path.glob("egmf-bench-*"))  # scratch removed


@pytest.mark.slow
def test_quick_run_of_all_six_reports_ratios_of_what_it_measured(tmp_path):
    report = run_benchmarks(BenchConfig(out=tmp_path, quick=True, readme=None, workdir=tmp_path, progress=False))
    assert report == json.loads((tmp_path / "bench.json").read_text())
    b = report["benchmarks"]
    assert sorted(b) == ["1", "2", "3", "4", "5", "6"]
    for res in b.values():
        assert res["seconds"] > 0 and res["checks"]
        for c in res["checks"]:
            if c["target"] is not None:
                assert c["passed"] == {">=": c["value"] >= c["target"], "<=": c["value"] <= c["target"],
                                       "<": c["value"] < c["target"]}[c["compare"]]
        assert res["passed"] == all(c["passed"] is not False for c in res["checks"])
        assert bool(res["bound"]) == (not res["passed"])
    one = b["1"]["measured"]
    assert one["cache_epoch"]["steps"] == one["media_epoch"]["steps"] > 0
    assert b["1"]["checks"][0]["value"] == pytest.approx(one["media_epoch_seconds"] / one["cache_epoch_seconds"])
    assert set(one["media_input_seconds"]) == {"decode", "audio", "visual", "text"}
    three = b["3"]["measured"]
    assert b["3"]["checks"][0]["value"] == pytest.approx(min(three["naive_seconds"]) / min(three["extract_seconds"]))
    assert set(three["naive_per_clip"]) == {"decode", "audio", "visual", "text", "save"}
    assert b["3"]["checks"][1]["value"] == pytest.approx(three["two_workers_clips_per_second"]
                                                         / three["extract_clips_per_second"])
    assert [c["value"] for c in b["3"]["checks"][2:]] == pytest.approx(
        [1 / three["batched_encoder_per_clip"][m] for m in ("audio", "visual", "text")])
    four = b["4"]["measured"]
    assert b["4"]["checks"][0]["value"] == pytest.approx(four["28"]["peak_rss"] / four["14"]["peak_rss"] - 1)
    assert four["14"]["clips"] == 14 and four["28"]["clips"] == 28 and four["14"]["peak_mb"] > 100
    five = b["5"]["measured"]
    assert b["5"]["checks"][0]["value"] == pytest.approx(five["epoch"]["data_seconds"] / five["epoch"]["seconds"])
    assert 0 <= five["trainer_data_wait_fraction"] < 1
    six = b["6"]["measured"]["variants"]
    assert len(six) == 4 and all(v["steps"] == 2 and v["real_tokens"] > 0 for v in six.values())
    before, after = six["random batches, SDPA"], six["bucketed, plain attention"]
    assert b["6"]["checks"][0]["value"] == pytest.approx(before["seconds"] / before["real_tokens"]
                                                         / (after["seconds"] / after["real_tokens"]))
    assert after["padding"] <= before["padding"] and after["padded_tokens"] >= after["real_tokens"]
    # A step cannot run faster than the arithmetic it has to do.
    assert all(v["over_bound"] > 1 for v in six.values())
    phases = ("data_seconds", "forward_seconds", "backward_seconds", "optimiser_seconds")
    assert all(sum(v[k] for k in phases) == pytest.approx(v["seconds"]) for v in six.values())
    table = (tmp_path / "README-table.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + sum(len(r["checks"]) for r in b.values())


def test_real_sized_clips_have_the_size_and_tracks_they_claim(tmp_path):
    import av

    from egmf.pipeline.bench.realsize import ClipSize, write_clip

    write_clip(tmp_path / "c.mp4", 0.4, ClipSize(), np.random.default_rng(0))
    with av.open(str(tmp_path / "c.mp4")) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height, video.average_rate) == ("h264", 1280, 720, 30)
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 48000, 2)
        assert sum(1 for _ in c.decode(video=0)) == 12


@pytest.mark.slow
def test_real_sized_row_extracts_the_generated_clips_and_times_both_epochs(tmp_path):
    from egmf.pipeline.bench.common import QUICK, Workspace
    from egmf.pipeline.bench.training import real_sized_epochs

    m = real_sized_epochs(Workspace(tmp_path, QUICK, progress=False))
    assert m["clips"] == m["media"]["clips"] == QUICK.real_clips and m["steps"] == 1
    assert 1.0 <= m["media"]["mean_seconds"] <= 1.5 and m["media"]["megabits_per_second"] > 0
    assert m["speedup"] == pytest.approx(m["media_epoch_seconds"] / m["cache_epoch_seconds"])
    assert set(m["media_input_seconds"]) == {"decode", "audio", "visual", "text"}
    assert m["extraction_clips_per_second"] == pytest.approx(QUICK.real_clips / m["extraction_seconds"])
    assert Cache.open(tmp_path / "real-sized-cache").split_counts() == {"train": QUICK.real_clips}
