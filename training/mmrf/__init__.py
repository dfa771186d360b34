"""MMRF: the model-based multi-agent WatchTime ranker (METHODS.md, "MMRF"; seeds/001).

Modules, in reading order:

- :mod:`training.mmrf.networks`: the N agents (shared DRL-Rec state encoder, per-agent
  state embeddings, attentive collaboration or MMRF-CO's concatenation, auxiliary and main
  actors, per-aspect critics) and the siamese user-feedback model M.
- :mod:`training.mmrf.losses`: per-aspect TD targets and critic losses, Eq. 4's actor loss,
  M's loss, the Bernoulli KL uncertainty and Eq. 6's simulated feedback.
- :mod:`training.mmrf.rewards`: the watch-time scale (saved with the model) and each agent's
  reward.
- :mod:`training.mmrf.samples`: slot-level transitions, non-impression sampling, the random
  action's picks, the simulated buffer D^M.
- :mod:`training.mmrf.train`: config and variants, the trainer (Algorithm 1), evaluation,
  ``python -m training.mmrf.train``.

Where the paper and METHODS.md leave a choice open, this package settles it (each module
says why): the MDP is slot-level on DRL-Rec's batches; one encoder feeds N per-agent
projections; logged actions are the logged item's vector; the bootstrap is the target
critic at the target actor's continuous action (the paper's TD error); Eq. 4's auxiliary
term reaches only the agent's own projection and actor; watch time is capped at its 0.99
quantile and divided by it; hate's reward is negated; M simulates in eval mode.
"""
