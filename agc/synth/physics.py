"""Vectorised toy physics model for synthetic AGC NanoAOD events.

Everything here works on whole blocks of events with numpy (no Python loop over events).
The model is deliberately simple but physically structured:

* **Production** of the hard process (ttbar, single top s/t-channel, tW, W+jets) with
  Breit-Wigner top (172.5 GeV, width 1.4) and W (80.4, 2.1) masses, system kinematics
  recoiling against initial-state radiation (ISR), and two-body decays done in the rest
  frame of the parent and boosted to the lab (t -> W b, W -> l nu / q q', tau -> l / tau_h).
  W branching ratios are the PDG values incl. taus.
* **Parton showers** (crudely): Poisson ISR emissions with a falling pT spectrum, hard
  final-state-radiation splitting of quarks into two resolved jets, pile-up-like soft jets.
* **Detector**: jet pT response/resolution (~20 % at 30 GeV, ~11 % at 100 GeV, b jets
  with a lower response from semileptonic decays), angular smearing, jet masses, ``jetId``
  in {0, 2, 6}, ``btagCSVV2`` with flavour-dependent efficiencies at the loose 0.5
  working point (b ~0.8, c ~0.35, light ~0.08), ``qgl``; prompt leptons with ID,
  isolation and ``sip3d`` distributions distinct from non-prompt leptons from heavy-flavour
  decays and fakes; isolated leptons also appear as (``jetId == 2``) jets as in real
  NanoAOD, with the ``Jet_electronIdx1``/``Electron_jetIdx`` cross references filled.
  Jets are stored above 15 GeV, electrons above 5 GeV and muons above 3 GeV, pT ordered.
* **ML inputs** (the jet-parton assignment of spec §5): ``qgl`` in [0, 1], gluon-like
  (low) for gluon jets and quark-like (high, peaked at 1) for quark jets, and -1 where
  NanoAOD leaves it undefined: below 20 GeV, for most jets failing the tight ID (lepton
  jets among them) and for ~5 % of the others, as in the real 2015 files; lepton masses
  (the electron's smeared around 0.5 MeV by the energy-momentum mismatch, the muon's
  0.1057 GeV to float precision). The draws these need beyond the ``qgl`` values (which
  values are undefined, the lepton masses) come from a second random stream (``aux_rng``),
  and the ``qgl`` values keep their place in the main one, so every other branch is the
  same as without them.

This module must never import the analysis code (``agc.analysis``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

M_TOP, G_TOP = 172.5, 1.41
M_W, G_W = 80.4, 2.085
M_B, M_C = 4.8, 1.5
M_TAU = 1.777
M_MU = 0.10566
M_E = 0.000511

# W -> e nu, mu nu, tau nu, u d, c s   (PDG, hadronic split evenly between ud and cs)
W_BR = np.array([0.1071, 0.1063, 0.1138, 0.3364, 0.3364])
W_BR = W_BR / W_BR.sum()
W_LEP_BR = np.array([1.0, 1.0, 1.0, 0.0, 0.0]) / 3.0  # leptonic-only W (single top s/t samples)
TAU_BR = np.array([0.1782, 0.1739, 0.6479])  # tau -> e, mu, hadrons


@dataclass(frozen=True)
class Tune:
    """Knobs of the generator for one sample (generator/shower "tune")."""

    isr_mean: float = 1.0  # mean number of ISR partons
    isr_alpha: float = 2.3  # Pareto index of the ISR pT spectrum (pT > isr_ptmin)
    isr_ptmin: float = 14.0
    fsr_prob: float = 0.22  # probability that a quark radiates a resolved hard gluon
    pu_mean: float = 0.9  # mean number of pile-up jets
    eff_b: float = 0.84  # b-tag efficiency (btagCSVV2 > 0.5) for central b jets
    eff_c: float = 0.34
    eff_l: float = 0.075
    b_response: float = 0.94  # mean pT response of b jets (semileptonic decays, fragmentation)
    mtt_scale: float = 95.0  # slope (GeV) of the ttbar / single-top system mass spectrum
    ele_tight: float = 0.52  # prompt electron cutBased == 4 probability
    mu_tight: float = 0.20  # prompt muon tightId probability (real 2015 AGC files: mostly False)
    neg_weight_frac: float = 0.0
    gen_weight: float = 1.0


TT = Tune(isr_mean=1.15, fsr_prob=0.22)
TUNES: dict[str, Tune] = {
    "ttbar__nominal": TT,
    "ttbar__scaledown": replace(TT, isr_mean=0.92, fsr_prob=0.18, mtt_scale=93.0),
    "ttbar__scaleup": replace(TT, isr_mean=1.32, fsr_prob=0.27, mtt_scale=97.0),
    "ttbar__ME_var": replace(
        TT,
        isr_mean=1.6,
        isr_alpha=2.15,
        mtt_scale=105.0,
        eff_b=0.82,
        neg_weight_frac=0.24,
        gen_weight=149.3,
    ),
    "ttbar__PS_var": replace(TT, isr_mean=1.25, fsr_prob=0.30, eff_b=0.80, b_response=0.92),
    "single_top_s_chan__nominal": Tune(
        isr_mean=0.25, mtt_scale=70.0, neg_weight_frac=0.19, gen_weight=2.63
    ),
    "single_top_t_chan__nominal": Tune(isr_mean=0.12, mtt_scale=60.0),
    "single_top_tW__nominal": Tune(isr_mean=0.9, mtt_scale=100.0),
    "wjets__nominal": Tune(isr_mean=0.0, pu_mean=0.9, neg_weight_frac=0.135, gen_weight=225892.45),
}

# ------------------------------------------------------------------------------------------
# kinematics helpers; 4-vectors are (..., 4) arrays (E, px, py, pz)


def p4_from_ptetaphim(pt, eta, phi, m):
    px = pt * np.cos(phi)
    py = pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    e = np.sqrt(px * px + py * py + pz * pz + m * m)
    return np.stack([e, px, py, pz], axis=-1)


def ptetaphi(p):
    pt = np.hypot(p[..., 1], p[..., 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, p[..., 3] / np.maximum(pt, 1e-9), 0.0))
    phi = np.arctan2(p[..., 2], p[..., 1])
    return pt, eta, phi


def boost(p, beta):
    """Boost 4-vectors p (N,4) by velocity beta (N,3)."""
    b2 = np.minimum(np.einsum("ij,ij->i", beta, beta), 1 - 1e-12)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.einsum("ij,ij->i", beta, p[:, 1:])
    g2 = np.where(b2 > 0, (gamma - 1.0) / np.where(b2 > 0, b2, 1.0), 0.0)
    p3 = p[:, 1:] + (g2 * bp + gamma * p[:, 0])[:, None] * beta
    e = gamma * (p[:, 0] + bp)
    return np.concatenate([e[:, None], p3], axis=1)


def isotropic(rng, n):
    cos = rng.uniform(-1, 1, n)
    sin = np.sqrt(1 - cos * cos)
    phi = rng.uniform(-np.pi, np.pi, n)
    return np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], axis=1)


def decay2(rng, parent, m_parent, m1, m2):
    """Isotropic two-body decay of ``parent`` (mass m_parent) in its rest frame, boosted."""
    n = len(parent)
    m1 = np.broadcast_to(m1, (n,)).astype(float)
    m2 = np.broadcast_to(m2, (n,)).astype(float)
    s = m_parent * m_parent
    lam = np.maximum((s - (m1 + m2) ** 2) * (s - (m1 - m2) ** 2), 0.0)
    pstar = np.sqrt(lam) / (2 * m_parent)
    d = isotropic(rng, n) * pstar[:, None]
    a = np.concatenate([np.sqrt(pstar**2 + m1**2)[:, None], d], axis=1)
    b = np.concatenate([np.sqrt(pstar**2 + m2**2)[:, None], -d], axis=1)
    beta = parent[:, 1:] / parent[:, :1]
    return boost(a, beta), boost(b, beta)


def breit_wigner(rng, n, m0, width, lo, hi):
    """Truncated (non-relativistic) Breit-Wigner by inverse CDF; ``hi`` may be an array."""
    flo = np.arctan(2 * (lo - m0) / width)
    fhi = np.arctan(2 * (np.asarray(hi) - m0) / width)
    u = rng.uniform(0, 1, n)
    return m0 + 0.5 * width * np.tan(flo + u * (fhi - flo))


def system(rng, mass, pt_x, pt_y, y_sigma):
    """4-vector of a system of given mass, transverse momentum and Gaussian rapidity."""
    n = len(mass)
    y = rng.normal(0, y_sigma, n)
    mt = np.sqrt(mass**2 + pt_x**2 + pt_y**2)
    return np.stack([mt * np.cosh(y), pt_x, pt_y, mt * np.sinh(y)], axis=1)


def pareto(rng, n, xmin, alpha):
    return xmin * rng.uniform(0, 1, n) ** (-1.0 / (alpha - 1.0))


# ------------------------------------------------------------------------------------------
# particle lists


class Objects:
    """Candidate objects (jets or leptons) of a block of events, stored sparsely.

    Each ``add`` appends one object slot; only the events in which the object exists are
    kept, so the detector simulation works on flat arrays of existing objects.  An object
    is identified by its *entry* (index into the concatenation of all slots in order).
    """

    def __init__(self, n):
        self.n = n
        self.rows: list[np.ndarray] = []
        self.fields: list[dict[str, np.ndarray]] = []

    def add(self, valid, **fields) -> int:
        """Add a slot from per-event arrays (or scalars); ``valid`` says where it exists."""
        rows = np.flatnonzero(np.broadcast_to(valid, (self.n,)))
        return self.add_rows(rows, **{k: (v[rows] if np.ndim(v) else v) for k, v in fields.items()})

    def add_rows(self, rows, **fields) -> int:
        """Add a slot existing in events ``rows``; fields are per-object arrays or scalars."""
        self.rows.append(rows)
        self.fields.append({k: np.broadcast_to(v, rows.shape) for k, v in fields.items()})
        return len(self.rows) - 1

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows)

    def row(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.intp)

    def column(self, name, default=0.0, dtype=float) -> np.ndarray:
        """One field of all entries (``default`` for slots that did not set it)."""
        out = np.empty(len(self), dtype=dtype)
        start = 0
        for rows, fields in zip(self.rows, self.fields, strict=True):
            out[start : start + len(rows)] = fields.get(name, default)
            start += len(rows)
        return out


def _add_parton(jets, valid, p4, flav, pflav, kind=0):
    pt, eta, phi = ptetaphi(p4)
    return jets.add(valid, pt=pt, eta=eta, phi=phi, flav=flav, pflav=pflav, kind=kind)


def _add_quark_with_fsr(rng, jets, tune, valid, p4, flav, pflav):
    """A quark that, with probability fsr_prob, radiates a resolved hard gluon jet."""
    n = len(p4)
    pt, eta, phi = ptetaphi(p4)
    split = valid & (rng.uniform(0, 1, n) < tune.fsr_prob)
    z = rng.uniform(0.08, 0.45, n)
    dr = rng.uniform(0.45, 1.3, n)
    ang = rng.uniform(-np.pi, np.pi, n)
    jets.add(
        valid,
        pt=np.where(split, (1 - z) * pt, pt),
        eta=eta,
        phi=phi,
        flav=flav,
        pflav=pflav,
        kind=0,
    )
    jets.add(
        split,
        pt=z * pt,
        eta=eta + dr * np.cos(ang),
        phi=phi + dr * np.sin(ang),
        flav=0,
        pflav=21,
        kind=4,
    )


def _add_isr(rng, jets, tune, n, mean, alpha=None, ptmin=None, kmax=6):
    """Poisson ISR partons; returns their summed (px, py) for the recoil of the hard system."""
    alpha = tune.isr_alpha if alpha is None else alpha
    ptmin = tune.isr_ptmin if ptmin is None else ptmin
    nisr = np.minimum(rng.poisson(mean, n), kmax)
    sx = np.zeros(n)
    sy = np.zeros(n)
    for k in range(kmax):
        v = nisr > k
        pt = np.minimum(pareto(rng, n, ptmin, alpha), 1500.0)
        eta = np.clip(rng.normal(0, 2.0, n), -4.9, 4.9)
        phi = rng.uniform(-np.pi, np.pi, n)
        r = rng.uniform(0, 1, n)
        flav = np.where(r < 0.015, 5, np.where(r < 0.04, 4, 0))
        pflav = np.where(flav > 0, flav, np.where(r < 0.75, 21, 1))
        jets.add(v, pt=pt, eta=eta, phi=phi, flav=flav, pflav=pflav, kind=1)
        sx += np.where(v, pt * np.cos(phi), 0)
        sy += np.where(v, pt * np.sin(phi), 0)
    return sx, sy


def _decay_w(rng, jets, leps, tune, valid, w, mw, charge, br):
    """Decay W 4-vectors (N,4); adds leptons or quark jets."""
    n = len(w)
    mode = np.searchsorted(np.cumsum(br), rng.uniform(0, 1, n) * 0.999999)
    is_tau = mode == 2
    m1 = np.choose(mode, [M_E, M_MU, M_TAU, 0.3, M_C])
    m2 = np.choose(mode, [0.0, 0.0, 0.0, 0.3, 0.5])
    a, b = decay2(rng, w, mw, m1, m2)
    had = valid & (mode >= 3)
    # hadronic: ud or cs (c jet + light jet)
    _add_quark_with_fsr(
        rng, jets, tune, had, a, np.where(mode == 4, 4, 0), np.where(mode == 4, 4, 2)
    )
    _add_quark_with_fsr(rng, jets, tune, had, b, 0, np.where(mode == 4, 3, 1))
    # leptonic
    tmode = np.searchsorted(np.cumsum(TAU_BR), rng.uniform(0, 1, n) * 0.999999)
    x = np.where(tmode < 2, 1 - np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0.25, 1.0, n))
    vis = np.where(is_tau, x, 1.0)[:, None] * a
    flav = np.where(mode == 0, 11, np.where(mode == 1, 13, np.where(tmode == 0, 11, 13)))
    lep_valid = valid & (mode < 2) | (valid & is_tau & (tmode < 2))
    pt, eta, phi = ptetaphi(vis)
    leps.add(
        lep_valid,
        pt=pt,
        eta=eta,
        phi=phi,
        flav=flav,
        charge=charge,
        origin=np.where(is_tau, 1, 0),
        jet=-1,
    )
    tauh = valid & is_tau & (tmode == 2)
    jets.add(tauh, pt=pt, eta=eta, phi=phi, flav=0, pflav=0, kind=5)
    return mode


def _top_decay(rng, jets, leps, tune, valid, top, mt, charge, br):
    n = len(top)
    mw = breit_wigner(rng, n, M_W, G_W, 50.0, mt - M_B - 0.5)
    w, b = decay2(rng, top, mt, mw, M_B)
    _add_quark_with_fsr(rng, jets, tune, valid, b, 5, 5 * charge)
    return _decay_w(rng, jets, leps, tune, valid, w, mw, charge, br)


def _top_mass(rng, n):
    return breit_wigner(rng, n, M_TOP, G_TOP, M_TOP - 20 * G_TOP, M_TOP + 20 * G_TOP)


# ------------------------------------------------------------------------------------------
# processes


def _ttbar(rng, n, tune, jets, leps):
    yes = np.ones(n, dtype=bool)
    isx, isy = _add_isr(rng, jets, tune, n, tune.isr_mean)
    m1, m2 = _top_mass(rng, n), _top_mass(rng, n)
    mtt = m1 + m2 + rng.gamma(1.6, tune.mtt_scale, n)
    sysp = system(rng, mtt, -isx + rng.normal(0, 6, n), -isy + rng.normal(0, 6, n), 0.9)
    t1, t2 = decay2(rng, sysp, mtt, m1, m2)
    _top_decay(rng, jets, leps, tune, yes, t1, m1, 1, W_BR)
    _top_decay(rng, jets, leps, tune, yes, t2, m2, -1, W_BR)


def _single_top_t(rng, n, tune, jets, leps):
    yes = np.ones(n, dtype=bool)
    isx, isy = _add_isr(rng, jets, tune, n, tune.isr_mean)
    charge = np.where(rng.uniform(0, 1, n) < 0.63, 1, -1)  # t : tbar ~ 63 : 37
    # forward light quark and a soft spectator b from gluon splitting
    q_pt = rng.gamma(2.2, 22.0, n)
    q_eta = rng.choice([-1, 1], n) * np.abs(rng.normal(2.3, 0.9, n))
    q_phi = rng.uniform(-np.pi, np.pi, n)
    q = p4_from_ptetaphim(q_pt, q_eta, q_phi, 0.0)
    b_pt = pareto(rng, n, 15.0, 2.6)
    b_eta = rng.normal(0, 1.6, n)
    b_phi = rng.uniform(-np.pi, np.pi, n)
    b = p4_from_ptetaphim(b_pt, b_eta, b_phi, M_B)
    _add_quark_with_fsr(rng, jets, tune, yes, q, 0, 1)
    _add_quark_with_fsr(rng, jets, tune, yes, b, 5, -5 * charge)
    mt = _top_mass(rng, n)
    px = -isx - q[:, 1] - b[:, 1] + rng.normal(0, 6, n)
    py = -isy - q[:, 2] - b[:, 2] + rng.normal(0, 6, n)
    top = system(rng, mt, px, py, 1.2)
    _top_decay(rng, jets, leps, tune, yes, top, mt, charge, W_LEP_BR)


def _single_top_s(rng, n, tune, jets, leps):
    yes = np.ones(n, dtype=bool)
    isx, isy = _add_isr(rng, jets, tune, n, tune.isr_mean)
    charge = np.where(rng.uniform(0, 1, n) < 0.62, 1, -1)
    mt = _top_mass(rng, n)
    msys = mt + M_B + rng.gamma(1.8, tune.mtt_scale, n)
    sysp = system(rng, msys, -isx + rng.normal(0, 6, n), -isy + rng.normal(0, 6, n), 0.8)
    top, b = decay2(rng, sysp, msys, mt, M_B)
    _add_quark_with_fsr(rng, jets, tune, yes, b, 5, -5 * charge)
    _top_decay(rng, jets, leps, tune, yes, top, mt, charge, W_LEP_BR)


def _single_top_tw(rng, n, tune, jets, leps):
    yes = np.ones(n, dtype=bool)
    isx, isy = _add_isr(rng, jets, tune, n, tune.isr_mean)
    charge = np.where(rng.uniform(0, 1, n) < 0.5, 1, -1)
    mt = _top_mass(rng, n)
    mw = breit_wigner(rng, n, M_W, G_W, 50.0, 200.0)
    msys = mt + mw + rng.gamma(1.6, tune.mtt_scale, n)
    sysp = system(rng, msys, -isx + rng.normal(0, 6, n), -isy + rng.normal(0, 6, n), 0.9)
    top, w = decay2(rng, sysp, msys, mt, mw)
    _top_decay(rng, jets, leps, tune, yes, top, mt, charge, W_BR)
    _decay_w(rng, jets, leps, tune, yes, w, mw, -charge, W_BR)
    # NLO real emission g b -> t W b (the part overlapping with ttbar): an extra b quark
    xb = rng.uniform(0, 1, n) < 0.7
    bq = p4_from_ptetaphim(
        pareto(rng, n, 20.0, 2.8), rng.normal(0, 1.5, n), rng.uniform(-np.pi, np.pi, n), M_B
    )
    _add_quark_with_fsr(rng, jets, tune, xb, bq, 5, -5 * charge)


# W+jets: number of hard partons from a falling (Berends-like) multiplicity distribution
WJ_MULT = np.array([1.0, 0.55, 0.2, 0.08, 0.035, 0.015, 0.006, 0.0025])
WJ_MULT = WJ_MULT / WJ_MULT.sum()


def _wjets(rng, n, tune, jets, leps):
    yes = np.ones(n, dtype=bool)
    npart = np.searchsorted(np.cumsum(WJ_MULT), rng.uniform(0, 1, n) * 0.999999)
    # heavy flavour: W+bb / W+cc (gluon splitting, needs 2 partons), W+c (needs 1)
    r = rng.uniform(0, 1, n)
    hf_bb = (npart >= 2) & (r < 0.025 + 0.012 * npart)
    hf_cc = (npart >= 2) & ~hf_bb & (r < 0.12 + 0.03 * npart)
    hf_c = (npart >= 1) & ~hf_bb & ~hf_cc & (r < 0.21 + 0.02 * npart)
    sx = np.zeros(n)
    sy = np.zeros(n)
    for k in range(len(WJ_MULT) - 1):
        v = npart > k
        pt = np.minimum(pareto(rng, n, 20.0, 2.7), 2000.0)
        eta = np.clip(rng.normal(0, 1.9, n), -4.9, 4.9)
        phi = rng.uniform(-np.pi, np.pi, n)
        rq = rng.uniform(0, 1, n)
        if k < 2:
            flav = np.where(hf_bb, 5, np.where(hf_cc, 4, 0))
            if k == 0:
                flav = np.where(hf_c, 4, flav)
        else:
            flav = np.zeros(n, dtype=int)
        pflav = np.where(flav > 0, flav, np.where(rq < 0.55, 21, 2))
        p4 = p4_from_ptetaphim(pt, eta, phi, 0.0)
        _add_quark_with_fsr(rng, jets, tune, v, p4, flav, pflav)
        sx += np.where(v, pt * np.cos(phi), 0)
        sy += np.where(v, pt * np.sin(phi), 0)
    mw = breit_wigner(rng, n, M_W, G_W, 50.0, 200.0)
    w = system(rng, mw, -sx + rng.normal(0, 8, n), -sy + rng.normal(0, 8, n), 1.9)
    charge = np.where(rng.uniform(0, 1, n) < 0.58, 1, -1)
    _decay_w(rng, jets, leps, tune, yes, w, mw, charge, W_LEP_BR)


PROCESSES = {
    "ttbar": _ttbar,
    "single_top_s_chan": _single_top_s,
    "single_top_t_chan": _single_top_t,
    "single_top_tW": _single_top_tw,
    "wjets": _wjets,
}


# ------------------------------------------------------------------------------------------
# detector simulation


def _sort_in_events(row, key, stored, n):
    """Order the stored entries by event, then by descending ``key`` (ties: entry order).

    Returns (counts per event, stored entries in output order, position of every entry
    in its event's stored list or -1).
    """
    idx = np.flatnonzero(stored)
    idx = idx[np.lexsort((-key[idx], row[idx]))]
    counts = np.bincount(row[idx], minlength=n)
    starts = np.cumsum(counts) - counts
    pos = np.full(len(row), -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx)) - np.repeat(starts, counts)
    return counts, idx, pos


def _btag(rng, flav, pt, eta, tune, kind):
    n = flav.shape
    eff = np.where(flav == 5, tune.eff_b, np.where(flav == 4, tune.eff_c, tune.eff_l))
    eff = np.where(kind == 2, 0.05, eff)  # pile-up jets
    eff = eff * np.where(np.abs(eta) > 1.5, 0.88, 1.0) * np.where(pt < 40, 0.93, 1.0)
    tagged = rng.uniform(0, 1, n) < eff
    # tagged: peaked towards 1 for b, flatter for c/light;  untagged: low values
    is_b = flav == 5
    val = np.empty(n)
    for sel, draw in (
        (tagged & is_b, lambda k: 1.0 - 0.5 * rng.beta(0.45, 3.0, k)),
        (tagged & ~is_b, lambda k: 0.5 + 0.5 * rng.beta(1.0, 1.3, k)),
        (~tagged & is_b, lambda k: 0.5 * rng.beta(2.5, 1.2, k)),
        (~tagged & ~is_b, lambda k: 0.5 * rng.beta(1.1, 2.4, k)),
    ):
        val[sel] = draw(int(np.count_nonzero(sel)))
    notracks = (np.abs(eta) > 2.4) | (~tagged & (rng.uniform(0, 1, n) < 0.03))
    return np.where(notracks, -10.0, np.clip(val, 0.0, 1.0))


#: Jets whose ``qgl`` NanoAOD leaves undefined (-1), as in the real 2015 AGC files: all below
#: QGL_MIN_PT, most of those failing the tight ID, a few of the others.
QGL_MIN_PT = 20.0
QGL_UNDEFINED_FAILING_ID = 0.85
QGL_UNDEFINED = 0.05
#: Largest stored ``qgl`` (real files: 0.99951).
QGL_MAX = 0.9995


def _qgl(rng, pflav):
    """Quark-gluon likelihood values of all jets (main stream; see :func:`_qgl_undefined`).

    Gluon jets pile up towards 0 and light-quark jets towards 1, like the real discriminant
    (quartiles ~0.15 / 0.6 / 0.95 for the jets of a W+jets mix); heavy-flavour jets are
    broader, between the two; at most QGL_MAX, as in real files.
    """
    gluon = (pflav == 21) | (pflav == 0)
    qgl = np.empty(pflav.shape)
    qgl[gluon] = rng.beta(1.2, 2.2, int(np.count_nonzero(gluon))) ** 1.6
    qgl[~gluon] = rng.beta(3.0, 1.3, int(np.count_nonzero(~gluon)))
    light = ~gluon & (np.abs(pflav) < 4)
    qgl[light] = 1 - (1 - qgl[light]) ** 2.2
    return np.minimum(qgl, QGL_MAX)


def _qgl_undefined(aux_rng, pt, jet_id):
    """Which jets get ``qgl == -1`` (drawn from the auxiliary stream, one uniform per jet)."""
    u = aux_rng.uniform(0, 1, pt.shape)
    p = np.where(jet_id == 6, QGL_UNDEFINED, QGL_UNDEFINED_FAILING_ID)
    return (pt < QGL_MIN_PT) | (u < p)


def _jet_id(rng, eta, kind):
    u = rng.uniform(0, 1, eta.shape)
    p6 = np.where(kind == 2, 0.75, np.where(np.abs(eta) > 2.7, 0.93, 0.985))
    p2 = np.where(kind == 2, 0.12, 0.01)
    jid = np.where(u < p6, 6, np.where(u < p6 + p2, 2, 0))
    return np.where(kind == 3, 2, jid)  # isolated-lepton jets fail the lepton veto


def _lepton_props(rng, flav, origin, pt, eta, tune):
    """cutBased / tightId, sip3d and isolation for prompt (0), tau (1), non-prompt (2), fake (3)."""
    n = flav.shape
    prompt = origin <= 1
    # impact parameter significance
    hn = np.abs(rng.normal(0, 1, n))
    sip = np.where(
        origin == 0,
        hn * 1.1 + np.where(rng.uniform(0, 1, n) < 0.04, rng.exponential(3.0, n), 0),
        np.where(origin == 1, hn * 2.6, 1.0 + rng.exponential(np.where(origin == 2, 6.0, 2.5), n)),
    )
    iso = np.where(
        prompt,
        rng.exponential(0.025, n)
        + np.where(rng.uniform(0, 1, n) < 0.08, rng.uniform(0.05, 0.6, n), 0),
        rng.lognormal(np.log(np.where(origin == 2, 0.6, 0.3)), 0.8, n),
    )
    iso = np.where(rng.uniform(0, 1, n) < np.where(prompt, 0.25, 0.02), 0.0, iso)
    # electron cut-based ID (includes isolation): 0 fail, 1 veto, 2 loose, 3 medium, 4 tight
    crack = (np.abs(eta) > 1.444) & (np.abs(eta) < 1.566)
    ptight = np.where(
        prompt, tune.ele_tight * np.where(crack, 0.3, 1.0) * np.where(pt < 20, 0.7, 1.0), 0.02
    )
    ptight = np.where(iso > 0.1, ptight * 0.1, ptight)
    u = rng.uniform(0, 1, n)
    cut = np.where(
        u < ptight,
        4,
        np.where(
            u < ptight + 0.12, 3, np.where(u < ptight + 0.2, 2, np.where(u < ptight + 0.3, 1, 0))
        ),
    )
    mtight = rng.uniform(0, 1, n) < np.where(prompt, tune.mu_tight, 0.25 * tune.mu_tight)
    return sip, iso, cut, mtight


#: Stored muon masses of the real files (M_MU rounded from the four-vector, 10 mantissa
#: bits): two neighbouring values, the upper one in 93 % of the muons.
MUON_MASSES = (0.10565, 0.10571)
MUON_MASS_UPPER = 0.93


def _lepton_mass(aux_rng, is_e):
    """Stored lepton masses: electrons smeared around M_E (real files: sigma ~13 MeV, either
    sign, from the energy-momentum mismatch), muons one of MUON_MASSES."""
    n = is_e.shape
    electron = M_E + aux_rng.normal(0.0, 0.013, n)
    upper = aux_rng.uniform(0, 1, n) < MUON_MASS_UPPER
    muon = np.where(upper, MUON_MASSES[1], MUON_MASSES[0])
    return np.where(is_e, electron, muon)


def simulate(rng, process: str, tune: Tune, n: int, aux_rng=None) -> dict:
    """Generate ``n`` events: returns {collection: (counts, {field: flat array})}.

    ``aux_rng`` draws what only the ML step reads (which ``qgl`` values are undefined, lepton
    masses); default: a generator spawned from ``rng``'s seed, which leaves ``rng``'s own
    stream untouched.
    """
    if aux_rng is None:
        aux_rng = rng.spawn(1)[0]
    jets = Objects(n)
    leps = Objects(n)
    PROCESSES[process](rng, n, tune, jets, leps)

    # pile-up-like soft jets
    npu = np.minimum(rng.poisson(tune.pu_mean, n), 4)
    for k in range(4):
        rows = np.flatnonzero(npu > k)
        m = len(rows)
        jets.add_rows(
            rows,
            pt=15.0 + rng.exponential(7.0, m) * (1 + 0.5 * (rng.uniform(0, 1, m) < 0.1)),
            eta=rng.uniform(-4.7, 4.7, m),
            phi=rng.uniform(-np.pi, np.pi, m),
            flav=0,
            pflav=0,
            kind=2,
        )

    # non-prompt leptons from heavy-flavour jets, light-jet fakes (before the lepton-jets)
    jrow, f = jets.row(), jets.column("flav", 0, int)
    r = rng.uniform(0, 1, len(jrow))
    p_e = np.where(f == 5, 0.19, np.where(f == 4, 0.09, 0.004))  # the same for muons
    src = np.flatnonzero(r < 2 * p_e)
    m = len(src)
    leps.add_rows(
        jrow[src],
        pt=rng.beta(1.4, 4.0, m) * jets.column("pt")[src],
        eta=jets.column("eta")[src] + rng.normal(0, 0.08, m),
        phi=jets.column("phi")[src] + rng.normal(0, 0.08, m),
        flav=np.where(r[src] < p_e[src], 11, 13),
        charge=np.where(rng.uniform(0, 1, m) < 0.5, 1, -1),
        origin=np.where(f[src] > 0, 2, 3),
        jet=src,
    )

    # ---- leptons: smear, acceptance, properties
    lrow = leps.row()
    nl = len(lrow)
    lflav = leps.column("flav", 11, int)
    is_e = lflav == 11
    lpt = leps.column("pt") * rng.normal(1.0, np.where(is_e, 0.025, 0.015), nl)
    leta = leps.column("eta")
    lphi = (leps.column("phi") + np.pi) % (2 * np.pi) - np.pi
    lorig = leps.column("origin", 0, int)

    # isolated prompt leptons are also clustered into jets (jetId 2), as in real NanoAOD
    has_jet = np.flatnonzero((lorig <= 1) & (rng.uniform(0, 1, nl) < np.where(is_e, 0.7, 0.5)))
    m = len(has_jet)
    first = len(jets)
    jets.add_rows(
        lrow[has_jet],
        pt=lpt[has_jet] * rng.normal(1.02, 0.04, m) + rng.exponential(2.0, m),
        eta=leta[has_jet],
        phi=lphi[has_jet],
        flav=0,
        pflav=0,
        kind=3,
        lep=has_jet,
    )
    ljet = np.where(lorig <= 1, -1, leps.column("jet", -1, np.int64))
    ljet[has_jet] = first + np.arange(m)

    # ---- jets: detector response
    jrow = jets.row()
    shape = jrow.shape
    kind = jets.column("kind", 0, int)
    flav = jets.column("flav", 0, int)
    pflav = jets.column("pflav", 0, int)
    ppt = jets.column("pt")
    eta = jets.column("eta")
    phi = jets.column("phi")
    pt_safe = np.maximum(ppt, 1.0)
    reso = np.sqrt((3.5 / pt_safe) ** 2 + 1.0 / pt_safe + 0.05**2) * np.where(
        np.abs(eta) > 2.5, 1.3, 1.0
    )
    mean = np.where(flav == 5, tune.b_response, np.where(kind == 3, 1.0, 0.975))
    resp = mean + reso * rng.standard_normal(shape)
    resp = np.where(kind == 3, 1.0, np.maximum(resp, 0.2))
    pt = ppt * resp
    eta = eta + rng.normal(0, 0.02, shape) * (kind != 3)
    phi = phi + rng.normal(0, 0.02, shape) * (kind != 3)
    phi = (phi + np.pi) % (2 * np.pi) - np.pi
    mfrac = rng.lognormal(
        np.log(np.where(pflav == 21, 0.14, np.where(flav == 5, 0.15, 0.12))), 0.35, shape
    )
    mass = np.where(kind == 3, rng.uniform(0.0, 2.0, shape), np.minimum(pt * mfrac, 0.6 * pt))
    stored = (pt > 15.0) & (np.abs(eta) < 4.7)
    btag = _btag(rng, flav, pt, eta, tune, kind)
    qgl = _qgl(rng, pflav)
    jet_id = _jet_id(rng, eta, kind)
    qgl = np.where(_qgl_undefined(aux_rng, pt, jet_id), -1.0, qgl)
    jcounts, jidx, jpos = _sort_in_events(jrow, pt, stored, n)
    jf = {
        "pt": pt, "eta": eta, "phi": phi, "mass": mass, "btagCSVV2": btag, "qgl": qgl,
        "jetId": jet_id, "hadronFlavour": np.where(kind == 2, 0, flav),
        "partonFlavour": np.where(kind == 2, 0, pflav), "kind": kind,
        "lep": jets.column("lep", -1, np.int64),
    }  # fmt: skip
    jf = {k: v[jidx] for k, v in jf.items()}

    # leptons: acceptance and storage thresholds
    stored_l = np.where(is_e, (lpt > 5) & (np.abs(leta) < 2.5), (lpt > 3) & (np.abs(leta) < 2.4))
    sip, iso, cut, mtight = _lepton_props(rng, lflav, lorig, lpt, leta, tune)
    lfields = {
        "pt": lpt, "eta": leta, "phi": lphi, "mass": _lepton_mass(aux_rng, is_e),
        "charge": leps.column("charge", 1, int), "sip3d": sip,
        "iso": iso, "cut": cut, "tight": mtight, "origin": lorig,
        "jetIdx": np.where(ljet >= 0, jpos[np.maximum(ljet, 0)], -1),
    }  # fmt: skip

    out = {"Jet": (jcounts, jf)}
    lep = jf["lep"]
    for name, fl in (("Electron", 11), ("Muon", 13)):
        counts, lidx, lpos = _sort_in_events(lrow, lpt, stored_l & (lflav == fl), n)
        out[name] = (counts, {k: v[lidx] for k, v in lfields.items()})
        # jet -> lepton cross references (only for the isolated-lepton jets)
        jf[f"{name.lower()}Idx1"] = np.where(lep >= 0, lpos[np.maximum(lep, 0)], -1)
    return out
