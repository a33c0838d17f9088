"""Tests of the synthetic NanoAOD generator (agc.synth): schema, determinism, layout, catalog."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from agc import synth, vocabulary
from agc.synth import physics, schema, writer

REAL_FILE = "nanoAOD_2015_CMS_Open_Data_ttbar.root"
REAL_FRACTION = 0.0508  # analysis 15 core + 3 counters, spec §2

SMALL = {"ttbar__nominal": (2, 3_000), "wjets__nominal": (1, 2_500)}


def _tree(path) -> uproot.TTree:
    return uproot.open(path)["Events"]


def _files(catalog_path: Path) -> dict[str, list[Path]]:
    cat = json.loads(catalog_path.read_text())
    out = {}
    for process, variations in cat.items():
        for variation, entry in variations.items():
            out[f"{process}__{variation}"] = [
                catalog_path.parent / f["path"] for f in entry["files"]
            ]
    return out


def _all_arrays(path) -> dict[str, np.ndarray]:
    t = _tree(path)
    return {
        k: ak.to_numpy(ak.flatten(v, axis=None))
        for k, v in zip(t.keys(), t.arrays(how=tuple), strict=True)
    }


@pytest.fixture(scope="module")
def minimal_ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_minimal")
    return synth.generate(out, events=SMALL, layout="minimal", seed=7, workers=1)


@pytest.fixture(scope="module")
def realistic_ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_realistic")
    return synth.generate(
        out,
        events={"ttbar__nominal": (1, 12_000), "wjets__nominal": (1, 8_000)},
        layout="realistic",
        seed=3,
    )


@pytest.fixture(scope="module")
def real_tree():
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / REAL_FILE
    if not path.is_file():
        pytest.skip(f"real NanoAOD reference file not found at {path}")
    return _tree(path)


def _describe(branch) -> tuple[str, str | None]:
    interp = branch.interpretation
    jagged = type(interp).__name__ == "AsJagged"
    dt = (interp.content if jagged else interp).from_dtype.newbyteorder("=")
    return dt.str.lstrip("<>|="), branch.count_branch.name if branch.count_branch else None


# ---------------------------------------------------------------------------------- schema


def test_public_api():
    assert len(synth.SAMPLES) == 9 and set(synth.DEFAULT_DATASET) == set(synth.SAMPLES)
    assert synth.DEFAULT_DATASET["ttbar__nominal"][0] >= 2
    assert synth.DEFAULT_DATASET["wjets__nominal"][0] >= 2
    assert (
        synth.DEFAULT_DATASET["wjets__nominal"][0] * synth.DEFAULT_DATASET["wjets__nominal"][1]
        >= 150_000
    )
    total = sum(n * m for n, m in synth.DEFAULT_DATASET.values())
    assert 100_000 <= total <= 1_000_000
    assert len(vocabulary.CORE_BRANCHES) == 15 and len(vocabulary.SPEC_BRANCHES) == 18


def test_generator_does_not_import_analysis():
    src = "\n".join(p.read_text() for p in Path(synth.__file__).parent.glob("*.py"))
    assert "agc.analysis" not in src.replace("(``agc.analysis``)", "").replace("`agc.analysis`", "")
    assert "from ..analysis" not in src and "import analysis" not in src


@pytest.mark.parametrize("layout", ["minimal", "realistic"])
def test_branches_match_real_file(layout, minimal_ds, realistic_ds, real_tree):
    path = _files(minimal_ds if layout == "minimal" else realistic_ds)["ttbar__nominal"][0]
    ours = _tree(path)
    needed = set(schema.MINIMAL_BRANCHES)
    assert needed <= set(ours.keys())
    names = set(ours.keys()) if layout == "realistic" else needed
    if layout == "realistic":
        assert set(ours.keys()) == set(real_tree.keys())  # all 947 real branch names
    for name in sorted(names):
        assert _describe(ours[name]) == _describe(real_tree[name]), name
    # real counters are unsigned
    for c in vocabulary.COUNTER_BRANCHES:
        assert ours[c].interpretation.from_dtype == np.dtype(">u4")


def test_minimal_layout_has_only_analysis_set(minimal_ds):
    for paths in _files(minimal_ds).values():
        assert set(_tree(paths[0]).keys()) == set(schema.MINIMAL_BRANCHES)


def test_nanoaod_schema_builds_collections(minimal_ds, realistic_ds):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    NanoAODSchema.warn_missing_crossrefs = False
    for cat in (minimal_ds, realistic_ds):
        path = _files(cat)["ttbar__nominal"][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = NanoEventsFactory.from_root(
                {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
            ).events()
        assert len(ev) == _tree(path).num_entries
        assert np.array_equal(ak.to_numpy(ak.num(ev.Jet)), _tree(path)["nJet"].array(library="np"))
        assert ak.sum(ak.num(ev.Electron)) + ak.sum(ak.num(ev.Muon)) > 0
        assert ak.all(abs(ev.Electron.pdgId) == 11) and ak.all(abs(ev.Muon.pdgId) == 13)
        assert ak.all(ev.Electron.charge == -ev.Electron.pdgId // 11)
        # four-vector behaviour works
        pair = ev.Jet[ak.num(ev.Jet) >= 2]
        m = (pair[:, 0] + pair[:, 1]).mass
        assert len(m) > 0 and ak.all(m > 0)


def test_counters_jets_and_events(minimal_ds):
    files = _files(minimal_ds)
    for sample, paths in files.items():
        events = []
        for p in paths:
            a = _tree(p).arrays()
            for coll in ("Jet", "Electron", "Muon"):
                n = np.asarray(a[f"n{coll}"])
                for field in a.fields:
                    if field.startswith(coll + "_"):
                        assert np.array_equal(ak.to_numpy(ak.num(a[field])), n), field
            pt = a["Jet_pt"]
            assert ak.all(pt[:, 1:] <= pt[:, :-1]), "jets must be pT ordered"
            assert ak.all(pt >= 15)  # stored above 15 GeV (10-bit mantissa rounding)
            assert ak.all(a["Electron_pt"][:, 1:] <= a["Electron_pt"][:, :-1])
            assert set(np.unique(ak.flatten(a["Jet_jetId"]))) <= {0, 2, 6}
            assert np.mean(ak.flatten(a["Jet_jetId"]) == 6) > 0.65  # real file: ~0.8
            # cross references point inside their collections
            for src, dst in (
                ("Electron_jetIdx", "Jet"),
                ("Jet_electronIdx1", "Electron"),
                ("Jet_muonIdx1", "Muon"),
                ("Muon_jetIdx", "Jet"),
            ):
                idx = a[src]
                assert ak.all((idx == -1) | ((idx >= 0) & (idx < a[f"n{dst}"]))), src
            events.append(np.asarray(a["event"]))
        ev = np.concatenate(events)
        assert len(np.unique(ev)) == len(ev), f"duplicate event numbers in {sample}"


def test_isolated_lepton_jet_cross_reference(minimal_ds):
    a = _tree(_files(minimal_ds)["ttbar__nominal"][0]).arrays()
    idx = a["Electron_jetIdx"]
    has = idx >= 0
    # an electron's jet points back to that electron when it is the electron's own jet
    back = a["Jet_electronIdx1"][ak.where(has, idx, 0)]
    local = ak.local_index(idx)
    own = has & (back == local)
    assert ak.sum(own) > 0.3 * ak.sum(has)
    assert ak.all(a["Jet_jetId"][ak.where(own, idx, 0)][own] == 2)


# ---------------------------------------------------------------------------- ML inputs


def test_ml_branches_are_in_both_layouts(minimal_ds, realistic_ds):
    for catalog in (minimal_ds, realistic_ds):
        names = set(_tree(_files(catalog)["ttbar__nominal"][0]).keys())
        assert set(vocabulary.ML_BRANCHES) <= names and set(vocabulary.ML_SPEC_BRANCHES) <= names


def test_quark_gluon_likelihood_is_realistic(minimal_ds):
    a = _tree(_files(minimal_ds)["ttbar__nominal"][0]).arrays()
    qgl, pt = (ak.to_numpy(ak.flatten(a[f"Jet_{f}"])) for f in ("qgl", "pt"))
    eta, jet_id, flavour = (
        ak.to_numpy(ak.flatten(a[f"Jet_{f}"])) for f in ("eta", "jetId", "partonFlavour")
    )
    undefined = qgl == -1
    assert np.all(undefined | ((qgl >= 0) & (qgl < 1)))  # [0, 1) or exactly -1
    assert np.all(undefined[pt < 20])  # NanoAOD leaves soft jets without a likelihood
    assert np.mean(undefined[jet_id != 6]) > 0.6  # real 2015 files: ~0.8
    selected = (pt > 30) & (np.abs(eta) < 2.4) & ((jet_id & 4) != 0)
    assert 0.01 < np.mean(undefined[selected]) < 0.12  # real file: 3.9 %
    good = selected & ~undefined
    light, gluon = good & (np.abs(flavour) < 4) & (flavour != 0), good & (flavour == 21)
    assert light.sum() > 500 and gluon.sum() > 100
    # quark jets are quark-like (towards 1), gluon jets gluon-like (towards 0)
    assert np.median(qgl[light]) > 0.75 and np.median(qgl[gluon]) < 0.35
    assert np.mean(qgl[light] > 0.9) > 0.3 and np.mean(qgl[gluon] < 0.1) > 0.25


def test_lepton_masses_and_angles_are_realistic(minimal_ds):
    a = _tree(_files(minimal_ds)["ttbar__nominal"][0]).arrays()
    e_mass, mu_mass = (ak.to_numpy(ak.flatten(a[b])) for b in ("Electron_mass", "Muon_mass"))
    assert len(e_mass) > 1000 and len(mu_mass) > 1000
    # the electron's stored mass is tiny and of either sign (real file: +-0.02 GeV)
    assert abs(np.median(e_mass)) < 0.003 and 0.005 < np.std(e_mass) < 0.03
    assert np.mean(e_mass < 0) > 0.3 and np.max(np.abs(e_mass)) < 0.1
    # the muon's is 0.1057 GeV, as the real file stores it (two neighbouring float values)
    stored = schema.to_branch_dtype("Muon_mass", np.array(physics.MUON_MASSES))
    assert np.allclose(stored, 0.10568, atol=5e-5) and stored[0] != stored[1]
    assert set(np.unique(mu_mass).tolist()) <= set(stored.tolist())
    assert 0.85 < np.mean(mu_mass == stored[1]) < 0.99
    for branch in ("Electron_phi", "Muon_phi"):
        phi = ak.to_numpy(ak.flatten(a[branch]))
        assert np.all(np.abs(phi) <= np.pi + 1e-3) and abs(np.mean(phi)) < 0.1, branch
        assert np.std(phi) == pytest.approx(np.pi / np.sqrt(3), rel=0.05), branch  # uniform
    event = np.asarray(a["event"])
    assert np.array_equal(event, np.arange(1, len(event) + 1))  # half even, half odd


def test_ml_quantities_come_from_their_own_random_stream():
    """A different auxiliary stream changes qgl and the lepton masses, and nothing else."""

    def run(aux_seed):
        rng = writer.block_rng(5, "ttbar__nominal", 0, 0)
        return physics.simulate(rng, "ttbar", physics.TUNES["ttbar__nominal"], 2000,
                                np.random.default_rng(aux_seed))  # fmt: skip

    first, second = run(1), run(2)
    ml_only = {("Jet", "qgl"), ("Electron", "mass"), ("Muon", "mass")}
    for collection, (counts, fields) in first.items():
        assert np.array_equal(counts, second[collection][0]), collection
        for name, values in fields.items():
            same = np.array_equal(values, second[collection][1][name])
            assert same != ((collection, name) in ml_only), (collection, name)
    # the main stream of a block is the one of the seeding contract; the auxiliary one differs
    key = (zlib.crc32(b"ttbar__nominal"), 0, 3)
    contract = np.random.Generator(np.random.PCG64(np.random.SeedSequence(9, spawn_key=key)))
    main = writer.block_rng(9, "ttbar__nominal", 0, 3)
    aux = writer.block_rng(9, "ttbar__nominal", 0, 3, writer.AUX_STREAM)
    draws = contract.uniform(size=4)
    assert np.array_equal(main.uniform(size=4), draws)
    assert not np.array_equal(aux.uniform(size=4), draws)


# --------------------------------------------------------------------------- determinism


def test_determinism_and_workers(tmp_path):
    events = {"ttbar__nominal": (2, 1_500), "single_top_tW__nominal": (1, 1_000)}
    a = synth.generate(tmp_path / "a", events=events, layout="minimal", seed=11, workers=1)
    b = synth.generate(tmp_path / "b", events=events, layout="minimal", seed=11, workers=2)
    c = synth.generate(tmp_path / "c", events=events, layout="minimal", seed=12, workers=1)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert [p.name for v in fa.values() for p in v] == [p.name for v in fb.values() for p in v]
    for sample in fa:
        for pa, pb, pc in zip(fa[sample], fb[sample], fc[sample], strict=True):
            xa, xb, xc = _all_arrays(pa), _all_arrays(pb), _all_arrays(pc)
            assert xa.keys() == xb.keys()
            for k in xa:
                assert np.array_equal(xa[k], xb[k]), (sample, k)
            assert (
                not np.array_equal(xa["Jet_pt"], xc["Jet_pt"])
                if len(xa["Jet_pt"]) == len(xc["Jet_pt"])
                else True
            )
            assert not np.allclose(xa["Jet_pt"][:50], xc["Jet_pt"][:50])
    # files of one sample differ from each other
    t0, t1 = (_tree(p)["Jet_pt"].array() for p in fa["ttbar__nominal"])
    assert not np.allclose(ak.flatten(t0)[:100], ak.flatten(t1)[:100])


# ------------------------------------------------------------------------ writer internals


def _tree_metadata(path) -> bytes:
    """Uncompressed payload of the ``Events`` TTree key (everything but the baskets)."""
    chunk, _ = uproot.open(path).key("Events").get_uncompressed_chunk_cursor()
    return bytes(chunk.raw_data)


def test_reused_tree_metadata_is_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "_EMPTY_TREE_METADATA", {})
    tasks = [synth.file_tasks(tmp_path / d, {"wjets__nominal": (1, 2_500)}, layout="minimal")[0]
             for d in ("a", "b")]  # fmt: skip
    for t in tasks:
        Path(t.path).parent.mkdir(parents=True)
        writer.write_file(t)
    assert len(writer._EMPTY_TREE_METADATA) == 1  # the second file reused the first's
    # same path length, same content: the files differ at most in their timestamps
    assert _tree_metadata(tasks[0].path) == _tree_metadata(tasks[1].path)
    a, b = (_all_arrays(t.path) for t in tasks)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_zlib_level1_encoder():
    c = writer.parse_compression("ZLIB:1")
    assert c.code_pair == uproot.ZLIB(1).code_pair  # the file says ZLIB level 1
    data = np.linspace(0, 1, 50_000, dtype=">f4").tobytes()
    assert zlib.decompress(c.compress(data)) == data
    assert type(writer.parse_compression("ZLIB:4")) is uproot.ZLIB


def test_filler_values_come_from_pool_without_repeats():
    rng = np.random.default_rng(5)
    v = schema.filler_values("GenPart_pt", 200_000, rng)
    assert v.dtype == np.float32 and np.isin(v, schema.filler_pool("GenPart_pt")).all()
    windows = np.lib.stride_tricks.sliding_window_view(v.view(np.uint32), 16)
    assert len(np.unique(windows, axis=0)) == len(windows)  # no run of 16 values repeats
    again = schema.filler_values("GenPart_pt", 200_000, np.random.default_rng(5))
    assert np.array_equal(v, again)


def test_sort_in_events():
    row = np.array([1, 0, 1, 0, 1, 2])
    key = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    stored = np.array([True, True, True, True, False, False])
    counts, idx, pos = physics._sort_in_events(row, key, stored, 4)
    assert counts.tolist() == [2, 2, 0, 0]
    assert idx.tolist() == [3, 1, 2, 0]  # event 0 by descending key, then event 1
    assert pos.tolist() == [1, 1, 0, 0, -1, -1]


# -------------------------------------------------------------------------------- layout


def test_realistic_layout_byte_fraction(realistic_ds):
    for sample, paths in _files(realistic_ds).items():
        t = _tree(paths[0])
        total = sum(b.compressed_bytes for b in t.values())
        analysis = sum(t[name].compressed_bytes for name in vocabulary.SPEC_BRANCHES)
        frac = analysis / total
        assert REAL_FRACTION / 2 <= frac <= REAL_FRACTION * 2, (sample, frac)
        # filler compresses like data: neither incompressible nor trivial
        big = t["GenPart_pt"]
        ratio = big.compressed_bytes / big.uncompressed_bytes
        assert 0.1 < ratio < 0.95, ratio
        assert len(np.unique(ak.flatten(big.array(entry_stop=500)))) > 50


@pytest.mark.parametrize("compression", ["LZ4:4", "ZSTD:5", "LZMA:1", "none"])
def test_compression_options(tmp_path, compression):
    cat = synth.generate(
        tmp_path,
        events={"single_top_s_chan__nominal": (1, 200)},
        layout="minimal",
        compression=compression,
        workers=1,
    )
    t = _tree(_files(cat)["single_top_s_chan__nominal"][0])
    assert t.num_entries == 200 and len(t["Jet_pt"].array()) == 200


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.generate(tmp_path, events={"nope__nominal": (1, 10)})
    with pytest.raises(ValueError):
        synth.generate(tmp_path, events={"wjets__nominal": (1, 10)}, layout="huge")
    with pytest.raises(ValueError):
        synth.generate(tmp_path, events={"wjets__nominal": (1, 10)}, compression="BROTLI:3")


# ------------------------------------------------------------------------------- catalog


def test_catalog_structure(minimal_ds):
    real = json.loads(
        (Path(synth.__file__).parents[1] / "data" / "nanoaod_inputs.json").read_text()
    )
    cat = json.loads(minimal_ds.read_text())
    assert minimal_ds.name == "catalog.json"
    for process, variations in cat.items():
        assert process in real
        for variation, entry in variations.items():
            assert variation in real[process]
            ref = real[process][variation]
            assert entry.keys() == ref.keys()
            assert isinstance(entry["nevts_total"], int)
            assert entry["nevts_total"] == sum(f["nevts"] for f in entry["files"])
            for f in entry["files"]:
                assert f.keys() == ref["files"][0].keys()
                assert not Path(f["path"]).is_absolute()
                path = minimal_ds.parent / f["path"]
                assert path.is_file()
                assert _tree(path).num_entries == f["nevts"]
    assert cat["ttbar"]["nominal"]["nevts_total"] == 6_000
    assert len(cat["ttbar"]["nominal"]["files"]) == 2
    assert not list(minimal_ds.parent.rglob("*.tmp*"))


def test_interrupted_generation_leaves_no_catalog(tmp_path, monkeypatch):
    import agc.synth as mod

    synth.generate(tmp_path, events={"wjets__nominal": (1, 50)}, layout="minimal", workers=1)
    assert (tmp_path / "catalog.json").exists()
    calls = []

    def boom(task):
        calls.append(task)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(mod, "write_file", boom)
    with pytest.raises(RuntimeError):
        synth.generate(tmp_path, events={"wjets__nominal": (1, 50)}, layout="minimal", workers=1)
    assert calls and not (tmp_path / "catalog.json").exists()
