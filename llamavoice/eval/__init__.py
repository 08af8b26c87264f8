"""Offline evaluation: metrics, the harness that writes run directories, and a training callback.

- :mod:`llamavoice.eval.text_norm`: text normalization shared by ASR reference and hypothesis.
- :mod:`llamavoice.eval.metrics`: WER/CER, ``AsrScorer``, ``SpeakerScorer``, ``MosScorer``, PESQ/STOI/mel.
- :mod:`llamavoice.eval.harness`: eval lists, pluggable systems, ``run_eval``.
- :mod:`llamavoice.eval.reconstruction`: VAE reconstruction quality (``run_vae_eval``).
- :mod:`llamavoice.eval.callback`: ``EvalCallback`` for WER/SIM curves during training.

Nothing heavy is imported here; the evaluator packages (the ``[eval]`` extra) load on first use.
"""
