"""One model for many sessions: the backbone pass is batched across sessions, each gets its own rows back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from monitor.live.shared_model import BatchingConfig, BatchingFeatureService, PooledModel, ServiceClosed


@pytest.fixture(scope="module")
def model(tiny_bundle):
    from monitor.model.bundle import load_bundle

    return load_bundle(tiny_bundle).build_model(device="cpu")


def _waves(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * rng.uniform(0.6, 2.5)))).astype(np.float32) for _ in range(n)]


def test_sessions_share_passes_and_each_gets_its_own_features_back(model):
    service = BatchingFeatureService(model, BatchingConfig(max_batch=16, max_wait_ms=50)).start()
    try:
        requests = {i: _waves(i, 3) for i in range(6)}
        got: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(len(requests))

        def session(i: int) -> None:
            barrier.wait()
            got[i] = service.features(requests[i])

        threads = [threading.Thread(target=session, args=(i,)) for i in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert service.segments == 18 and max(service.batch_sizes) > 3  # requests were joined into passes
        for i, waves in requests.items():
            alone = model.backbone_features(waves).numpy()
            np.testing.assert_allclose(got[i], alone, atol=1e-4)
        # a session's points do not depend on what shared its pass: head and baseline apply per session
        emb, probs = PooledModel(model, service).embed_waveforms(requests[0])
        ref_emb, ref_probs = model.embed_waveforms(requests[0])
        np.testing.assert_allclose(emb, ref_emb, atol=1e-4)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-4)
    finally:
        service.close()
    with pytest.raises(ServiceClosed):
        service.features(requests[0])


def test_a_failing_request_fails_only_its_own_session(model, monkeypatch):
    service = BatchingFeatureService(model, BatchingConfig(max_batch=16, max_wait_ms=100)).start()
    original = model.backbone_features

    def fragile(waves):
        if any(len(w) == 123 for w in waves):
            raise RuntimeError("a broken segment")
        return original(waves)

    monkeypatch.setattr(model, "backbone_features", fragile)
    outcome: dict[str, object] = {}

    def session(name: str, waves: list[np.ndarray]) -> None:
        try:
            outcome[name] = service.features(waves)
        except RuntimeError as exc:
            outcome[name] = exc

    try:
        threads = [threading.Thread(target=session, args=("bad", [np.zeros(123, np.float32)])),
                   threading.Thread(target=session, args=("good", _waves(1, 2)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        service.close()
    assert isinstance(outcome["bad"], RuntimeError)
    assert isinstance(outcome["good"], np.ndarray) and outcome["good"].shape[0] == 2
