"""Stage I training: corpora -> features -> emotion head -> embeddings -> reducer -> model bundle.

Modules: ``corpora`` (adapters, manifest, speaker/corpus splits), ``features``
(cached openSMILE/backbone features, read with the monitor's audio reader),
``augment``, ``sampling`` (class/corpus-balanced batches), ``settings`` (the
one definition of the training settings: flags, defaults, ``TrainConfig``),
``train`` (the head and WavLM training loop), ``export`` (embeddings .npz,
reducer, bundle, provenance), ``experiments`` (held-out protocols and their
metrics), ``mood`` (the persistent-mood replay and its self-normalisation
control), ``ablation`` (paired Stage II ablations), ``evaluate_audio`` (a
bundle scored on a folder of audio). Speaker normalisation itself lives in
``calibration.speaker``. Run ``python -m training --help``: build, evaluate,
experiment, ablate, score, manifest, extract.
"""
