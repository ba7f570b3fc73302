"""calibration.quadrants: the one quadrant rule the dashboard, the history and the reports share."""

import numpy as np

from calibration.quadrants import NEUTRAL_RADIUS, QUADRANT_NAMES, QUADRANTS, quadrant, quadrant_masks


def test_each_quadrant_and_the_neutral_centre():
    assert quadrant(0.05, 0.05) == "neutral"
    assert quadrant(0.5, 0.5) == "high_arousal_positive"
    assert quadrant(-0.5, 0.5) == "high_arousal_negative"
    assert quadrant(-0.5, -0.5) == "low_arousal_negative"
    assert quadrant(0.5, -0.5) == "low_arousal_positive"
    assert set(QUADRANTS) == set(QUADRANT_NAMES) and "pleasant · high arousal" in QUADRANT_NAMES.values()


def test_vectorised_masks_partition_the_points_exactly_as_the_scalar_rule():
    r = NEUTRAL_RADIUS
    ties = [(0.0, 0.0), (r, 0.0), (r * 0.99, 0.0), (0.0, -r), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5),
            (-0.3, 0.3), (0.3, -0.3)]
    rng = np.random.default_rng(0)
    pts = np.concatenate([np.asarray(ties), rng.uniform(-1, 1, (500, 2))])
    masks = quadrant_masks(pts[:, 0], pts[:, 1])
    stacked = np.stack([masks[k] for k in QUADRANTS])
    assert (stacked.sum(axis=0) == 1).all()  # every point in exactly one quadrant
    for i, (v, a) in enumerate(pts):
        assert masks[quadrant(v, a)][i], (v, a)
