"""Stage I training: corpora -> features -> emotion head -> embeddings -> reducer -> model bundle.

Modules: ``corpora`` (adapters, manifest, speaker/corpus splits), ``features``
(audio loading, cached openSMILE/backbone features), ``augment``, ``sampling``
(class/corpus-balanced batches), ``train`` (the head and WavLM training loop),
``speaker_calibration`` (enrolment normalisation for training, persistent-mood
replay), ``export`` (embeddings .npz, reducer, bundle), ``experiments``
(held-out protocols and settings search). Run ``python -m training --help``.
"""
