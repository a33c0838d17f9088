"""The vocabulary: names built and parsed back, and the tables every other module relies on."""

from __future__ import annotations

import pytest

from agc import vocabulary as v


def all_output_names() -> set[str]:
    names = {n for s in v.SAMPLES for n in v.histogram_names(*v.split_sample_key(s))}
    return names | {v.histogram_name(r, v.PSEUDODATA) for r in v.REGIONS}


def test_every_output_name_parses_back_to_its_parts():
    names = all_output_names()
    assert len(names) == 124
    for name in names:
        parsed = v.parse_histogram_name(name)
        assert parsed is not None and str(parsed) == name
        assert v.histogram_name(*parsed) == name


@pytest.mark.parametrize(
    ("name", "parts", "sample"),
    [
        ("4j1b_ttbar", ("4j1b", "ttbar", "nominal"), "ttbar__nominal"),
        ("4j2b_ttbar_PS_var", ("4j2b", "ttbar", "PS_var"), "ttbar__PS_var"),
        ("4j1b_ttbar_btag_var_2_down", ("4j1b", "ttbar", "btag_var_2_down"), "ttbar__nominal"),
        # the longest process name wins: single_top_tW, not a 'single' process
        ("4j2b_single_top_tW_pt_res_up", ("4j2b", "single_top_tW", "pt_res_up"),
         "single_top_tW__nominal"),
        ("4j1b_wjets_scale_var_up", ("4j1b", "wjets", "scale_var_up"), "wjets__nominal"),
        ("4j2b_pseudodata", ("4j2b", "pseudodata", "nominal"), None),
    ],
)  # fmt: skip
def test_parsing_and_the_sample_that_fills_a_histogram(name, parts, sample):
    parsed = v.parse_histogram_name(name)
    assert tuple(parsed) == parts and parsed.sample == sample


@pytest.mark.parametrize("name", ["3j1b_ttbar", "4j1b_zjets", "4j1b", "ttbar_4j1b"])
def test_names_of_no_known_region_or_process(name):
    assert v.parse_histogram_name(name) is None


def test_sample_keys():
    assert v.sample_key("ttbar", "ME_var") == "ttbar__ME_var"
    assert v.split_sample_key("single_top_tW__nominal") == ("single_top_tW", "nominal")
    with pytest.raises(ValueError, match="process__variation"):
        v.split_sample_key("ttbar_nominal")


def test_samples_are_those_of_the_real_catalog():
    from agc.catalog import build_fileset, load_catalog

    catalog, _ = load_catalog("agc")
    assert tuple(build_fileset(catalog, n_files=1)) == v.SAMPLES
    assert {v.split_sample_key(s)[0] for s in v.SAMPLES} == set(v.PROCESSES)


def test_binning_and_fit_binning():
    assert v.FIT_BINNING == tuple(110.0 + 40.0 * i for i in range(12))
    width = (v.HIGH - v.LOW) / v.N_BINS
    # every fit edge is an edge of the output histograms, FIT_REBIN of their bins apart
    assert all(((edge - v.LOW) / width).is_integer() for edge in v.FIT_BINNING)
    widths = {b - a for a, b in zip(v.FIT_BINNING[:-1], v.FIT_BINNING[1:], strict=True)}
    assert widths == {v.FIT_REBIN * width}
    assert v.FIT_BINNING[0] == v.FIT_START and v.FIT_BINNING[-1] == v.HIGH


def test_the_cabinetry_model_uses_the_vocabulary():
    from agc import inference

    config = inference.cabinetry_config()
    assert [r["Name"] for r in config["Regions"]] == list(v.CABINETRY_REGIONS)
    assert [r["RegionPath"] for r in config["Regions"]] == list(v.REGIONS)
    assert all(r["Binning"] == list(v.FIT_BINNING) for r in config["Regions"])
    assert {s["SamplePath"] for s in config["Samples"]} == {*v.PROCESSES, v.PSEUDODATA}
    # every template the fit needs is an output name of a full run
    assert set(inference.required_templates(config)) <= all_output_names()


def test_branch_sets():
    assert len(v.SPEC_BRANCHES) == 18 and len(set(v.ANALYSIS_BRANCHES)) == 18
    assert v.branch_set("analysis") == v.ANALYSIS_BRANCHES
    assert v.branch_set("4.1") == v.IO_BRANCH_SETS["4.1"]
