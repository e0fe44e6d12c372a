"""CH-SIMS v2 as released: the supervised folder ch-simsv2s/ and the unlabelled ch-simsv2u/ (its own meta.csv
with empty label columns), alone or side by side, under the label-file names that circulate, and clip ids kept
as the strings they are."""
import pytest
from typer.testing import CliRunner

from corpusgen import MMSA_COLUMNS, refuses, write_csv
from egmf.cache.reader import Cache
from egmf.extract.cli import app
from egmf.extract.datasets import sims_v2
from egmf.extract.run import EXIT_FAILED, EXIT_OK

runner = CliRunner()
SUPERVISED = [["aqgy3_0001", "00000", "我很开心", "0.8", "0.6", "1.0", "0.4", "Positive", "train"],
              ["aqgy3_0001", "00001", "还行吧", "0.0", "0.2", "0.0", "-0.2", "Neutral", "valid"],
              ["video_0002", "0001", "太差了", "-0.6", "-0.8", "-0.4", "-0.6", "Negative", "test"]]
UNLABELLED = [["u_0007", "1", "随便说说", "", "", "", "", "", ""],
              ["u_0007", "0012", "嗯", "", "", "", "", "", "train"]]


def release(root, supervised="meta.csv", unlabelled="meta.csv"):
    """root/ch-simsv2s and/or root/ch-simsv2u, each with its label CSV (None: that folder is absent)."""
    if supervised:
        write_csv(root / "ch-simsv2s" / supervised, MMSA_COLUMNS, SUPERVISED)
    if unlabelled:
        write_csv(root / "ch-simsv2u" / unlabelled, MMSA_COLUMNS, UNLABELLED)
    return root


@pytest.mark.parametrize("names", [("meta.csv", "meta.csv"), ("meta(s).csv", "meta(u).csv"), ("label.csv", "meta.csv")])
def test_parent_holding_both_parts(tmp_path, names):
    root = release(tmp_path, *names)
    supervised = sims_v2.load(root).utterances
    assert [u.id for u in supervised] == ["aqgy3_0001/00000", "aqgy3_0001/00001", "video_0002/0001"]
    assert [u.split for u in supervised] == ["train", "dev", "test"]
    assert supervised[0].media == root / "ch-simsv2s" / "Raw" / "aqgy3_0001" / "00000.mp4"
    unlabelled = sims_v2.load(root, part="unsupervised").utterances
    assert [(u.id, u.split) for u in unlabelled] == [("u_0007/1", "unlabelled"), ("u_0007/0012", "unlabelled")]
    assert unlabelled[1].media == root / "ch-simsv2u" / "Raw" / "u_0007" / "0012.mp4"
    assert all(v is None for u in unlabelled for v in u.labels.values())
    both = sims_v2.load(root, part="all").utterances
    assert [u.id for u in both] == [u.id for u in supervised + unlabelled]


def test_either_folder_alone(tmp_path):
    only_u = release(tmp_path / "a", supervised=None) / "ch-simsv2u"
    assert [u.id for u in sims_v2.load(only_u, part="unsupervised").utterances] == ["u_0007/1", "u_0007/0012"]
    assert len(sims_v2.load(only_u.parent, part="unsupervised").utterances) == 2
    for part in ("supervised", "all"):
        error = refuses(sims_v2.load, only_u, part=part, match="no labelled rows")
        assert "ch-simsv2s/" in str(error) and str(only_u / "meta.csv") in str(error)
    only_s = release(tmp_path / "b", unlabelled=None) / "ch-simsv2s"
    assert len(sims_v2.load(only_s).utterances) == 3
    error = refuses(sims_v2.load, only_s, part="unsupervised", match="no unlabelled rows")
    assert "point --root at the folder holding ch-simsv2u/" in str(error)


def test_refused_layouts(tmp_path):
    refuses(sims_v2.load, tmp_path, match=r"no CH-SIMS v2 label file \(meta.csv, label.csv, meta\(s\).csv")
    write_csv(tmp_path / "meta.csv", MMSA_COLUMNS, SUPERVISED)
    write_csv(tmp_path / "label.csv", MMSA_COLUMNS, SUPERVISED)
    refuses(sims_v2.load, tmp_path, match=r"two label files \(meta.csv, label.csv\)")


def test_egmf_extract_keeps_clip_ids_as_written(tmp_path):
    root = release(tmp_path / "sims")
    out = tmp_path / "store"
    args = ["--dataset", "sims-v2", "--root", str(root), "--out", str(out), "--preset", "tiny", "--threads", "1",
            "--modalities", "text", "--part", "all"]
    r = runner.invoke(app, args)
    assert r.exit_code == EXIT_OK, r.output
    c = Cache.open(out)
    assert c.meta["id"].tolist() == ["aqgy3_0001/00000", "aqgy3_0001/00001", "video_0002/0001", "u_0007/1",
                                     "u_0007/0012"]
    assert c.meta["split"].tolist()[3:] == ["unlabelled", "unlabelled"]
    r = runner.invoke(app, [*args[:3], str(root / "ch-simsv2u"), *args[4:-1], "supervised"])
    assert r.exit_code == EXIT_FAILED and "no labelled rows" in r.stderr and "Fix:" in r.stderr
