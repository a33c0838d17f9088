"""Histogram I/O, pseudodata and the spec §7.2 validation algorithm."""

import json

import numpy as np
import pytest

from agc.histograms import (
    add_pseudodata,
    merge,
    new_histogram,
    read_histograms,
    to_hist_dict,
    to_json_dict,
    validate,
    write_json,
    write_root,
)


def filled(values, weight=1.0):
    h = new_histogram("4j1b")
    h.fill(observable=np.asarray(values, dtype=float), weight=weight)
    return h


def test_root_and_json_round_trip(tmp_path):
    hists = {"4j1b_ttbar": filled([60, 555, 40, 300, 300], 1.5), "4j2b_ttbar": filled([])}
    written = write_root(hists, tmp_path / "h.root")
    assert written == ["4j1b_ttbar"]  # empty histograms are not written, as in the reference
    back = read_histograms(tmp_path / "h.root")
    assert list(back) == ["4j1b_ttbar"]
    np.testing.assert_allclose(
        back["4j1b_ttbar"].values(flow=True), hists["4j1b_ttbar"].values(flow=True)
    )
    np.testing.assert_allclose(
        back["4j1b_ttbar"].variances(flow=True), [2.25, 2.25] + [0] * 11 + [4.5] + [0] * 12 + [2.25]
    )
    write_json(hists, tmp_path / "h.json")
    data = json.loads((tmp_path / "h.json").read_text())
    assert list(data) == ["4j1b_ttbar"]
    assert len(data["4j1b_ttbar"]["edges"]) == 26 and len(data["4j1b_ttbar"]["contents"]) == 27
    assert data["4j1b_ttbar"]["contents"][0] == 1.5 and data["4j1b_ttbar"]["contents"][-1] == 1.5
    assert (
        read_histograms(tmp_path / "h.json")["4j1b_ttbar"].values(flow=True).tolist()
        == data["4j1b_ttbar"]["contents"]
    )


def test_reading_bad_files(tmp_path):
    from agc.histograms import HistogramFileError

    with pytest.raises(HistogramFileError, match="no such file"):
        read_histograms(tmp_path / "nope.root")
    (tmp_path / "junk.root").write_bytes(b"not a root file at all")
    with pytest.raises(HistogramFileError, match="junk.root: cannot read"):
        read_histograms(tmp_path / "junk.root")


def test_pseudodata_formula():
    hists = {
        "4j2b_ttbar_ME_var": filled([100] * 4),
        "4j2b_ttbar_PS_var": filled([100] * 2),
        "4j2b_wjets": filled([100], 10.0),
        "4j2b_single_top_t_chan": filled([100], 100.0),
        "4j1b_ttbar_ME_var": filled([100]),
    }  # 4j1b lacks PS_var and wjets
    out = add_pseudodata(hists)
    assert out["4j2b_pseudodata"].sum().value == pytest.approx((4 + 2) / 2 + 10)
    assert "4j1b_pseudodata" not in out


def test_merge_adds_by_name():
    a = {"x": filled([100]), "y": filled([200])}
    b = {"x": filled([100, 120])}
    m = merge([a, b])
    assert m["x"].sum().value == 3 and m["y"].sum().value == 1
    assert a["x"].sum().value == 1  # inputs untouched


def test_to_hist_dict_view():
    hists = {
        "4j1b_ttbar": filled([100]),
        "4j1b_ttbar_btag_var_0_up": filled([100], 2.0),
        "4j1b_single_top_t_chan_pt_scale_up": filled([300]),
        "4j2b_wjets": filled([200]),
    }
    view = to_hist_dict(hists, ["ttbar", "single_top_t_chan", "wjets"])
    assert view["4j1b"][:, "ttbar", "btag_var_0_up"].sum().value == 2.0
    assert view["4j1b"][:, "single_top_t_chan", "pt_scale_up"].sum().value == 1.0
    assert view["4j2b"][:, "wjets", "nominal"].sum().value == 1.0


def _ref(h):
    return to_json_dict({"n": h})["n"]


def test_validation_algorithm():
    base = filled([100, 100, 120, 300], 1.0)
    reference = {
        "4j1b_ttbar": _ref(base),
        "4j1b_pseudodata": _ref(base),
        "4j1b_ttbar_pt_res_up": _ref(base),
    }
    # identical output: OK; a missing pseudodata is tolerated; pt_res_up content is not compared
    out = {"4j1b_ttbar": base.copy(), "4j1b_ttbar_pt_res_up": filled([500])}
    report = validate(out, reference)
    assert report.ok and report.skipped_content == ["4j1b_ttbar_pt_res_up"]
    # one event of weight 1.5 migrates to the neighbouring bin: tolerated (atol 2, same sum)
    migrated = filled([100, 100, 300], 1.0)
    migrated.fill(observable=[125.0], weight=1.0)  # same bin as 120 -> no change
    migrated2 = filled([100, 100, 140, 300], 1.0)  # 120 -> 140: adjacent bins, equal sums
    assert validate({"4j1b_ttbar": migrated2, "4j1b_ttbar_pt_res_up": base}, reference).migrations
    assert validate({"4j1b_ttbar": migrated2, "4j1b_ttbar_pt_res_up": base}, reference).ok
    # a migration of a weight-3 event is not tolerated
    heavy = filled([100, 100, 300], 1.0)
    heavy.fill(observable=[140.0], weight=1.0)
    ref_heavy = {"4j1b_ttbar": _ref(filled([100, 100, 300]) + filled([120], 3.0))}
    bad = filled([100, 100, 300]) + filled([140], 3.0)
    report = validate({"4j1b_ttbar": bad}, ref_heavy)
    assert not report.ok and "bins 4-5 differ" in report.errors[0]
    # a lost event changes the sum: error; a missing histogram: error
    assert not validate({"4j1b_ttbar": filled([100, 100, 300])}, {"4j1b_ttbar": _ref(base)}).ok
    report = validate({}, {"4j1b_ttbar": _ref(base)})
    assert report.errors == ["4j1b_ttbar: missing from the output"]


def test_reference_validates_against_itself(shared_data, tmp_path):
    ref_path = shared_data / "agc" / "reference" / "histos_1_file_per_process.json"
    reference = json.loads(ref_path.read_text())
    assert len(reference) == 124
    output = read_histograms(ref_path)
    write_root(output, tmp_path / "histograms.root")
    report = validate(read_histograms(tmp_path / "histograms.root"), reference)
    assert report.ok, report.errors
    # and a perturbed W+jets bin (one event = 41.9) fails, as the spec says it must
    output["4j2b_wjets"].view(flow=True).value[10] += 41.8835
    assert not validate(output, reference).ok
