"""Held-out hazard recalibration: the split, the fitted map, and what it does to real numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slotspe_pipe.calibration import (
    HazardCalibration,
    fit_calibration,
    hazard_logits,
    holdout_mask,
    risk_from_hazards,
)
from slotspe_pipe.dataset import PatientRecords
from slotspe_pipe.model import nll_survival_loss


def _discrete_cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients drawn from a known discrete-time model (non-informative censoring): true logits
    (n, 4), observed bins and events."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    logits = np.array([-1.5, -1.2, -1.0, -0.5]) + 0.8 * x[:, None]
    hazards = 1.0 / (1.0 + np.exp(-logits))
    # death bin D (4 = survived all four), censoring after bin C: observe D if D <= C
    death = np.argmax(np.c_[rng.random((n, 4)) < hazards, np.ones(n, bool)], axis=1)
    censor = np.where(rng.random(n) < 0.3, rng.integers(0, 4, size=n), 3)
    event = (death <= censor).astype(int)
    bins = np.where(event == 1, death, censor)
    return logits, bins, event


def _nll(logits: np.ndarray, bins: np.ndarray, event: np.ndarray) -> float:
    return float(
        nll_survival_loss(torch.as_tensor(logits), torch.as_tensor(bins), torch.as_tensor(event), 0)
    )


def test_holdout_mask_is_stratified_and_seeded():
    event = np.array([1] * 40 + [0] * 60)
    mask = holdout_mask(event, 0.2, seed=3)
    assert mask.sum() == 20 and event[mask].sum() == 8  # 20% of deaths, 20% of censored
    np.testing.assert_array_equal(mask, holdout_mask(event, 0.2, seed=3))
    assert not np.array_equal(mask, holdout_mask(event, 0.2, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(event, 0.0, seed=1)


def test_fit_recovers_the_overconfidence_of_scaled_logits():
    logits, bins, event = _discrete_cohort(2000, seed=0)
    overconfident = 1.0 / (1.0 + np.exp(-5.0 * logits))  # a network 5x too sure of itself
    fitted = fit_calibration(overconfident, bins, event)
    assert 4.0 < fitted.temperature < 6.5
    assert fitted.details["holdout_nll_after"] < fitted.details["holdout_nll_before"]
    truth = _nll(logits, bins, event)
    assert _nll(5.0 * logits, bins, event) > 1.5 * truth
    repaired = hazard_logits(fitted.apply(overconfident))
    assert _nll(repaired, bins, event) < 1.01 * truth  # as good as the true model (in sample)
    # Well-calibrated hazards are left (almost) alone.
    honest = fit_calibration(1.0 / (1.0 + np.exp(-logits)), bins, event)
    assert 0.85 < honest.temperature < 1.2 and max(map(abs, honest.offsets)) < 0.2


def test_identity_without_enough_deaths_and_dict_round_trip():
    hazards = np.full((5, 4), 0.3)
    skipped = fit_calibration(hazards, np.zeros(5, int), np.array([1, 0, 0, 0, 0]))
    assert "skipped" in skipped.details
    np.testing.assert_array_equal(skipped.apply(hazards), hazards)
    fitted = HazardCalibration(2.0, (0.1, -0.2, 0.0, 0.3), {"holdout_events": 9})
    again = HazardCalibration.from_dict(fitted.to_dict())
    np.testing.assert_allclose(again.apply(hazards), fitted.apply(hazards))
    assert again.details == {"holdout_events": 9}
    # risk keeps the harness convention: higher hazards, higher risk
    assert risk_from_hazards(np.full((1, 4), 0.5))[0] > risk_from_hazards(hazards[:1])[0]


def test_patient_records_subset_keeps_rows_aligned():
    records = PatientRecords(
        case_ids=("a", "b", "c"),
        time=np.array([1.0, 2.0, 3.0]),
        event=np.array([1, 0, 1]),
        bin_index=np.array([0, 1, 2]),
        feature_paths=(("a.zarr",), ("b.zarr",), ("c.zarr",)),
        omics=np.eye(3, dtype=np.float32),
        omics_present=np.array([True, False, True]),
    )
    part = records.subset(np.array([False, True, True]))
    assert part.case_ids == ("b", "c") and part.feature_paths == (("b.zarr",), ("c.zarr",))
    np.testing.assert_array_equal(part.omics, np.eye(3, dtype=np.float32)[1:])
    assert part.time.tolist() == [2.0, 3.0] and part.omics_present.tolist() == [False, True]
