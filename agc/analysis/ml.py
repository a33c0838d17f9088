"""The ML step of the AGC (spec §5): jet-parton assignment with a boosted decision tree.

For each 4j2b event, every assignment of four of its leading ``min(n_jets, 6)`` selected jets
to the roles (W1, W2, b_had, b_lep) is a *candidate* (:func:`candidate_permutations`; W1 and
W2 are interchangeable, so 12, 60 or 180 candidates for 4, 5 or 6 jets). Each candidate gets
the 20 features of :data:`agc.vocabulary.ML_FEATURES`, built from its jets and the event's
single tight lepton; an XGBoost model scores every candidate, and the features of the
highest-scoring candidate per event are what the ML histograms show.

Conventions, those of the coffea reference:

* the jets are the selected jets *in stored order* (the order of the file's pT, not re-sorted
  after a jet-pT variation); with a varied pT the features use the varied pT (and the
  unchanged jet mass), so ``pt_scale_up`` and ``pt_res_up`` re-evaluate the assignment;
* Delta R is ``sqrt(deta**2 + dphi**2)`` *without* wrapping dphi into [-pi, pi];
* four-vectors are computed in the input precision (float32 for the stored pT, float64 for a
  varied pT). The jet sums (W, hadronic top) add cartesian components, as coffea's jet
  candidates do (the formulas of :mod:`agc.analysis.observables`); lepton + b_lep adds as
  scikit-hep ``vector``'s Momentum4D records, which the reference uses there. All 20
  features equal those of the reference code (run with coffea 2026 and vector 1.9) bit for bit;
* events with an *even* ``event`` number are scored by ``model_odd.json`` (the model trained
  on odd events) and odd events by ``model_even.json``;
* the score is XGBoost's ``predict_proba(...)[:, 1]``; the first of equal maxima wins, like
  ``argmax``.

Everything is columnar: flat per-jet columns (numpy or cupy, the namespace of the data), one
candidate table per jet multiplicity, no Python loop over events. The features go to the host
for XGBoost, which runs on the CPU. ``xgboost`` is imported only when models are loaded.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from agc.analysis.observables import cartesian
from agc.analysis.selection import electron_mask, muon_mask
from agc.analysis.xp import flat_namespace, to_flat_xp, to_host
from agc.errors import UserError
from agc.vocabulary import MAX_N_JETS, ML_EXTRA_BRANCHES, ML_FEATURES

log = logging.getLogger(__name__)

#: File names of the two models in a models directory (spec §5).
MODEL_EVEN, MODEL_ODD = "model_even.json", "model_odd.json"
#: Candidates scored per XGBoost call: bounds the feature table (20 float64 per candidate).
CANDIDATES_PER_BATCH = 1 << 18
N_FEATURES = len(ML_FEATURES)
#: Jet multiplicities that get candidates: at least the four roles, at most MAX_N_JETS.
MIN_N_JETS = 4


class ModelFilesError(UserError, FileNotFoundError):
    """The models directory lacks ``model_even.json``/``model_odd.json`` or one is unreadable."""


class MissingBranchesError(UserError, KeyError):
    """The events lack branches the ML step needs (spec §2: +6 branches with inference)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# -- candidates -------------------------------------------------------------------------------


@functools.cache
def candidate_permutations(n: int) -> np.ndarray:
    """The candidates of an event with ``n`` jets: rows of jet indices (W1, W2, b_had, b_lep).

    The order of the coffea reference: ordered 4-tuples of distinct indices in ``range(n)`` in
    lexicographic order, keeping only W1 > W2 (one of each interchangeable W pair). That gives
    n! / (2 (n - 4)!) rows: 12, 60 and 180 for n = 4, 5, 6; for n = 4 the first rows are
    (1, 0, 2, 3), (1, 0, 3, 2), (2, 0, 1, 3) and the last is (3, 2, 1, 0).

    The returned array is shared (cached) and read-only.
    """
    if n < MIN_N_JETS:
        raise ValueError(f"candidate_permutations: need at least 4 jets, not {n}")
    rows = [p for p in itertools.permutations(range(n), 4) if p[0] > p[1]]
    table = np.array(rows, dtype=np.int64)
    table.setflags(write=False)
    return table


# -- input columns ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JetColumns:
    """Flat per-jet columns (numpy or cupy) of the selected jets, event after event.

    ``pt`` is the (possibly varied) pT; ``btag`` is ``btagCSVV2``, ``qgl`` ``Jet_qgl``.
    """

    pt: Any
    eta: Any
    phi: Any
    mass: Any
    btag: Any
    qgl: Any


@dataclass(frozen=True)
class LeptonColumns:
    """The tight lepton of each event (numpy or cupy, one entry per event)."""

    pt: Any
    eta: Any
    phi: Any
    mass: Any

    def take(self, index) -> LeptonColumns:
        """The leptons of the events ``index`` (a boolean mask or indices)."""
        return LeptonColumns(self.pt[index], self.eta[index], self.phi[index], self.mass[index])


@dataclass(frozen=True)
class MLColumns:
    """What the ML step reads of a chunk besides the analysis columns.

    ``qgl``: per jet (all stored jets, in the order of the analysis' flat jet columns);
    ``lepton``: the tight lepton per event (NaN where an event has none); ``event``: the
    event numbers, which pick the model.
    """

    qgl: Any
    lepton: LeptonColumns
    event: Any


def _field(events: ak.Array, collection: str | None, name: str):
    """A branch as flat uproot arrays (``Jet_qgl``) or NanoEvents (``Jet.qgl``) give it."""
    branch = f"{collection}_{name}" if collection else name
    if branch in events.fields:
        return events[branch]
    return events[collection][name] if collection else events[name]


def _has(events: ak.Array, branch: str) -> bool:
    if branch in events.fields:
        return True
    collection, _, name = branch.partition("_")
    return bool(name) and collection in events.fields and name in events[collection].fields


def missing_branches(events: ak.Array) -> list[str]:
    """The ML branches (:data:`agc.vocabulary.ML_EXTRA_BRANCHES`) the events lack."""
    return [b for b in ML_EXTRA_BRANCHES if not _has(events, b)]


def ml_columns(events: ak.Array) -> MLColumns:
    """The ML columns of a chunk (flat uproot branches or NanoEvents).

    Raises :class:`MissingBranchesError` naming every missing branch.
    """
    missing = missing_branches(events)
    if missing:
        raise MissingBranchesError(
            f"the ML step needs the branches {', '.join(missing)}, which the events lack "
            f"(read the 'ml' branch set, agc.vocabulary.ML_BRANCHES)"
        )
    qgl = to_flat_xp(ak.flatten(_field(events, "Jet", "qgl"), axis=1))
    event = to_flat_xp(_field(events, None, "event"))
    return MLColumns(qgl, tight_lepton(events), event)


def tight_lepton(events: ak.Array) -> LeptonColumns:
    """pT, eta, phi and mass of the tight lepton (agc.analysis.selection) of each event.

    Meant for events with exactly one tight lepton (the regions' ``exactly_1l``); an event
    without one gets NaN, one with several gets one of them.
    """
    parts = []
    for collection, mask, fields in (
        ("Electron", electron_mask, ("pt", "eta", "cutBased", "sip3d")),
        ("Muon", muon_mask, ("pt", "eta", "tightId", "sip3d", "pfRelIso04_all")),
    ):
        jagged = [_field(events, collection, f) for f in (*fields, "phi", "mass")]
        counts = to_flat_xp(ak.num(jagged[0], axis=1))
        flat = [to_flat_xp(ak.flatten(c, axis=1)) for c in jagged]
        xp = flat_namespace(counts)
        tight = mask(*flat[: len(fields)])
        owner = xp.repeat(xp.arange(len(counts)), counts)[tight]
        kinematics = [flat[0], flat[1], flat[-2], flat[-1]]  # pt, eta, phi, mass
        parts.append((owner, [k[tight] for k in kinematics]))
    xp = flat_namespace(parts[0][0])
    n_events = len(events)
    out = []
    for i in range(4):
        dtype = xp.result_type(parts[0][1][i], parts[1][1][i])
        column = xp.full(n_events, xp.nan, dtype=dtype)
        for owner, values in parts:
            column[owner] = values[i]
        out.append(column)
    return LeptonColumns(*out)


# -- features ---------------------------------------------------------------------------------


def _mass_pt(px, py, pz, e, xp):
    """Mass and pT of summed cartesian components (vector's tau of xy_z_t, signed)."""
    tau2 = e**2 - (px**2 + py**2 + pz**2)
    return xp.copysign(xp.sqrt(xp.absolute(tau2)), tau2), xp.sqrt(px**2 + py**2)


def _momentum4d_pair_mass(v1, v2, xp):
    """Mass of the sum of two (pt, eta, phi, mass, t) vectors, as ``vector``'s Momentum4D adds.

    The reference sums lepton and jet as scikit-hep ``vector`` Momentum4D records in
    (pt, eta, phi, mass) coordinates: the sum's transverse part is built in (rho, phi), its
    eta from the summed z, and its mass from (rho, eta, t) -- not from cartesian components,
    which differ in the last float32 bits. ``t`` is each vector's energy.
    """
    pt1, eta1, phi1, t1 = v1
    pt2, eta2, phi2, t2 = v2
    diff = phi2 - phi1
    u, v = pt2 * xp.cos(diff), pt2 * xp.sin(diff)
    rho = xp.sqrt((pt1 + u) ** 2 + v**2)
    eta = xp.arcsinh((pt1 * xp.sinh(eta1) + pt2 * xp.sinh(eta2)) / rho)
    expmeta = xp.exp(-eta)
    invsintheta = 0.5 * (1 + expmeta**2) / expmeta
    tau2 = (t1 + t2) ** 2 - rho**2 * invsintheta**2
    return xp.copysign(xp.sqrt(xp.absolute(tau2)), tau2)


def _delta_r(eta1, phi1, eta2, phi2, xp):
    """sqrt(deta^2 + dphi^2), dphi *not* wrapped (as in the reference)."""
    return xp.sqrt((eta1 - eta2) ** 2 + (phi1 - phi2) ** 2)


def _group_features(jets: JetColumns, cart, lepton: LeptonColumns, lepton_t, first_jet, perms):
    """The 20 features of every candidate of events whose jets start at ``first_jet``.

    ``cart``: (x, y, z, t) of the jets; ``lepton`` / ``lepton_t``: these events' leptons and
    their energies; ``perms``: the candidate table of the events' jet multiplicity. Returns an
    (E, C, 20) float64 array in the namespace of the data.
    """
    xp = flat_namespace(jets.pt)
    idx = first_jet[:, None, None] + xp.asarray(perms)[None]  # E x C x 4
    w1, w2, bh, bl = idx[..., 0], idx[..., 1], idx[..., 2], idx[..., 3]
    out = xp.empty((*w1.shape, N_FEATURES), dtype=xp.float64)
    eta, phi = jets.eta, jets.phi
    l_eta, l_phi = lepton.eta[:, None], lepton.phi[:, None]
    out[..., 0] = _delta_r(l_eta, l_phi, eta[bl], phi[bl], xp)
    out[..., 1] = _delta_r(eta[w1], phi[w1], eta[w2], phi[w2], xp)
    out[..., 2] = _delta_r(eta[w1], phi[w1], eta[bh], phi[bh], xp)
    out[..., 3] = _delta_r(eta[w2], phi[w2], eta[bh], phi[bh], xp)
    x, y, z, t = cart
    lep = (lepton.pt[:, None], l_eta, l_phi, lepton_t[:, None])
    out[..., 4] = _momentum4d_pair_mass(lep, (jets.pt[bl], eta[bl], phi[bl], t[bl]), xp)
    wx, wy, wz, wt = x[w1] + x[w2], y[w1] + y[w2], z[w1] + z[w2], t[w1] + t[w2]
    out[..., 5] = _mass_pt(wx, wy, wz, wt, xp)[0]
    top_mass, top_pt = _mass_pt(wx + x[bh], wy + y[bh], wz + z[bh], wt + t[bh], xp)
    out[..., 6] = top_mass
    out[..., 7] = top_pt
    for k, column in enumerate((jets.pt, jets.btag, jets.qgl)):
        for role, jet in enumerate((w1, w2, bh, bl)):
            out[..., 8 + 4 * k + role] = column[jet]
    return out


def _starts(counts):
    """Index of each event's first jet in the flat jet columns."""
    xp = flat_namespace(counts)
    counts = xp.asarray(counts)
    return xp.cumsum(counts) - counts


def _groups(counts, max_n_jets: int):
    """Per jet multiplicity n >= 4: the events (indices) with min(jets, max_n_jets) == n."""
    xp = flat_namespace(counts)
    used = xp.minimum(xp.asarray(counts), max_n_jets)
    for n in range(MIN_N_JETS, max_n_jets + 1):
        events = xp.nonzero(used == n)[0]
        if len(events):
            yield n, events


def candidate_features(
    jets: JetColumns, counts, lepton: LeptonColumns, *, max_n_jets: int = MAX_N_JETS
) -> ak.Array:
    """The features of every candidate of every event: an (events, candidates, 20) array.

    ``jets``: flat columns of the selected jets; ``counts``: jets per event; ``lepton``: one
    per event. Events with fewer than four jets have no candidates. For inspection and tests;
    :func:`best_candidate_features` scores them without keeping them all.
    """
    xp = flat_namespace(jets.pt)
    cart = cartesian(jets.pt, jets.eta, jets.phi, jets.mass, xp)
    lepton_t = cartesian(lepton.pt, lepton.eta, lepton.phi, lepton.mass, xp)[3]
    starts = _starts(counts)
    per_event = np.zeros(len(counts), dtype=np.int64)
    blocks = []
    for n, events in _groups(counts, max_n_jets):
        perms = candidate_permutations(n)
        lep = lepton.take(events)
        table = _group_features(jets, cart, lep, lepton_t[events], starts[events], perms)
        host_events = to_host(events)
        per_event[host_events] = len(perms)
        blocks.append((host_events, to_host(table)))
    offsets = np.concatenate([[0], np.cumsum(per_event)])
    flat = np.empty((int(offsets[-1]), N_FEATURES), dtype=np.float64)
    for host_events, table in blocks:
        rows = offsets[host_events][:, None] + np.arange(table.shape[1])[None]
        flat[rows.ravel()] = table.reshape(-1, N_FEATURES)
    return ak.unflatten(flat, per_event)


# -- models -----------------------------------------------------------------------------------


def _model_paths(models_dir: str | os.PathLike) -> dict[str, Path]:
    directory = Path(models_dir)
    paths = {name: directory / name for name in (MODEL_EVEN, MODEL_ODD)}
    needs = f"the directory of the XGBoost models {MODEL_EVEN} and {MODEL_ODD}"
    if not directory.is_dir():
        raise ModelFilesError(f"ML models directory {directory} does not exist; give {needs}")
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ModelFilesError(
            f"ML models directory {directory}: {' and '.join(missing)} {verb} missing; give {needs}"
        )
    return paths


def _read_models(models_dir: str | os.PathLike) -> dict[str, bytes]:
    contents = {}
    for name, path in _model_paths(models_dir).items():
        try:
            contents[name] = path.read_bytes()
        except OSError as err:
            raise ModelFilesError(f"ML model {path}: cannot be read ({err})") from err
    return contents


def _fingerprint(contents: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in (MODEL_EVEN, MODEL_ODD):
        digest.update(name.encode() + b"\0" + len(contents[name]).to_bytes(8, "little"))
        digest.update(contents[name])
    return digest.hexdigest()


def check_models(models_dir: str | os.PathLike) -> str:
    """Check, without loading them, that ``models_dir`` holds two XGBoost JSON models of the
    20 features and that XGBoost is installed; returns :func:`models_fingerprint`.

    XGBoost is not imported here: a process that will fork workers must not have started
    XGBoost's OpenMP threads (a forked child would wait on their locks forever).
    """
    import importlib.util
    import json

    contents = _read_models(models_dir)
    for name, data in contents.items():
        path = Path(models_dir) / name
        try:
            learner = json.loads(data)["learner"]
            n_features = int(learner["learner_model_param"]["num_feature"])
        except (ValueError, KeyError, TypeError) as err:
            raise ModelFilesError(
                f"ML model {path}: not an XGBoost JSON model ({type(err).__name__}: {err})"
            ) from err
        if n_features != N_FEATURES:
            raise ModelFilesError(
                f"ML model {path}: takes {n_features} features, the assignment has {N_FEATURES}"
            )
    if importlib.util.find_spec("xgboost") is None:
        raise ModelFilesError(
            f"--ml {models_dir}: the ML step needs XGBoost: pip install 'agc-harness[ml]'"
        )
    return _fingerprint(contents)


def models_fingerprint(models_dir: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of both model files, names and order included: a cache key.

    Raises :class:`ModelFilesError` if a file is missing or unreadable.
    """
    return _fingerprint(_read_models(models_dir))


@dataclass(frozen=True, eq=False)
class MLModels:
    """The two XGBoost boosters of the jet-parton assignment (``xgboost.Booster``).

    ``even`` was trained on even events and scores odd ones; ``odd`` scores even events.
    ``fingerprint`` is :func:`models_fingerprint` of the files they were loaded from. The
    object pickles (boosters included), so it can be shipped to worker processes.
    """

    even: Any
    odd: Any
    fingerprint: str
    directory: str = ""
    #: iteration_range of each booster (that of ``XGBClassifier.predict_proba``).
    iterations: dict[str, tuple[int, int]] = field(default_factory=dict)

    def booster_for(self, even_event: bool):
        """The model that scores events of this parity (spec §5: even events -> model_odd)."""
        return self.odd if even_event else self.even

    def scores(self, features, even_event: bool) -> np.ndarray:
        """``predict_proba(features)[:, 1]`` of the model for events of this parity.

        ``features``: (candidates, 20), a host array, or a cupy array on the GPU path, which
        XGBoost's own device support scores where it is (the booster is switched to
        ``device="cuda"``; not yet run on a GPU here). Returns float32 scores in (0, 1), on the
        features' device.
        """
        which = MODEL_ODD if even_event else MODEL_EVEN
        booster = self.booster_for(even_event)
        if _on_device(features):
            booster.set_param({"device": "cuda"})
            if len(features) == 0:
                return features[:0, 0].astype("float32")
        else:
            features = np.ascontiguousarray(features)
            if len(features) == 0:
                return np.zeros(0, dtype=np.float32)
        return booster.inplace_predict(
            features, iteration_range=self.iterations.get(which, (0, 0)), validate_features=False
        )


def _on_device(array) -> bool:
    """True for a CUDA array (cupy), as :func:`agc.analysis.xp.flat_namespace` tells them."""
    return hasattr(array, "__cuda_array_interface__")


def _iteration_range(booster) -> tuple[int, int]:
    """The trees ``XGBClassifier.predict_proba`` uses: up to the best iteration, if recorded."""
    best = booster.attr("best_iteration")
    return (0, int(best) + 1) if best is not None else (0, 0)


def load_models(models_dir: str | os.PathLike, *, n_threads: int | None = None) -> MLModels:
    """Load ``model_even.json`` and ``model_odd.json`` from ``models_dir``.

    ``n_threads``: XGBoost threads per prediction (default: XGBoost's, all cores); a worker
    process among several should pass its share. Raises :class:`ModelFilesError` naming the
    missing or unreadable file(s) and the directory.
    """
    try:
        import xgboost  # noqa: PLC0415 - only with the ML step
    except ImportError as err:
        raise ModelFilesError(
            f"--ml {models_dir}: the ML step needs XGBoost: pip install 'agc-harness[ml]' "
            f"(or xgboost) ({err})"
        ) from err

    contents = _read_models(models_dir)
    boosters, iterations = {}, {}
    for name, data in contents.items():
        booster = xgboost.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgboost.core.XGBoostError as err:
            path = Path(models_dir) / name
            raise ModelFilesError(
                f"ML model {path}: not a readable XGBoost model ({str(err).splitlines()[0]})"
            ) from err
        if booster.num_features() != N_FEATURES:
            raise ModelFilesError(
                f"ML model {Path(models_dir) / name}: takes {booster.num_features()} features, "
                f"the assignment has {N_FEATURES}"
            )
        if n_threads is not None:
            booster.set_param({"nthread": int(n_threads)})
        boosters[name] = booster
        iterations[name] = _iteration_range(booster)
    log.info("ML models loaded from %s", models_dir)
    return MLModels(
        boosters[MODEL_EVEN],
        boosters[MODEL_ODD],
        _fingerprint(contents),
        str(models_dir),
        iterations,
    )


# -- the assignment -----------------------------------------------------------------------------


def best_candidate_features(
    models: MLModels,
    jets: JetColumns,
    counts,
    lepton: LeptonColumns,
    event,
    *,
    max_n_jets: int = MAX_N_JETS,
) -> np.ndarray:
    """Per event: the 20 features of its highest-scoring candidate (host, float64, E x 20).

    ``jets``: flat columns of the events' selected jets (in stored order); ``counts``: jets per
    event; ``lepton``: the tight lepton per event; ``event``: the event numbers (their parity
    picks the model). Ties go to the first candidate in :func:`candidate_permutations` order.
    Events with fewer than four jets (none in 4j2b) get NaN.
    """
    xp = flat_namespace(jets.pt)
    n_events = len(counts)
    out = np.full((n_events, N_FEATURES), np.nan)
    if n_events == 0:
        return out
    cart = cartesian(jets.pt, jets.eta, jets.phi, jets.mass, xp)
    lepton_t = cartesian(lepton.pt, lepton.eta, lepton.phi, lepton.mass, xp)[3]
    even = xp.asarray(event) % 2 == 0
    starts = _starts(counts)
    for n, events in _groups(counts, max_n_jets):
        perms = candidate_permutations(n)
        batch = max(1, CANDIDATES_PER_BATCH // len(perms))
        for parity in (True, False):
            chosen = events[even[events] == parity]
            for lo in range(0, len(chosen), batch):
                part = chosen[lo : lo + batch]
                table = _group_features(
                    jets, cart, lepton.take(part), lepton_t[part], starts[part], perms
                )
                if not _on_device(table):  # on the GPU path the features stay on the device
                    table = to_host(table)
                tx = flat_namespace(table)
                scores = models.scores(table.reshape(-1, N_FEATURES), parity)
                best = tx.argmax(scores.reshape(len(table), len(perms)), axis=1)
                out[to_host(part)] = to_host(table[tx.arange(len(table)), best])
    return out
