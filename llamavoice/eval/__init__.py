"""Offline evaluation: metrics, the harness that writes run directories, and a training callback.

- :mod:`llamavoice.eval.text_norm`: text normalization shared by ASR reference and hypothesis.
- :mod:`llamavoice.eval.metrics`: WER/CER, ``AsrScorer``, ``SpeakerScorer``, ``MosScorer``, PESQ/STOI/mel.
- :mod:`llamavoice.eval.lists`: eval lists (what to speak in which voice), built from corpus manifests.
- :mod:`llamavoice.eval.systems`: the systems compared (teacher recordings, Piper, a LlamaVoice model).
- :mod:`llamavoice.eval.harness`: ``score_item`` and ``run_eval``, which writes a run directory.
- :mod:`llamavoice.eval.report`: the aggregates, the Markdown table and the plot of a run.
- :mod:`llamavoice.eval.reconstruction`: VAE reconstruction quality (``run_vae_eval``).
- :mod:`llamavoice.eval.alignment`: the LM's learned text alignment against Piper's phoneme durations.
- :mod:`llamavoice.eval.callback`: ``EvalCallback`` for WER/SIM curves during training.

Nothing heavy is imported here; the evaluator packages (the ``[eval]`` extra) load on first use.
"""
