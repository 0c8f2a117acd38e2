"""Training: objectives, optimizers, the jitted step, checkpoints, metrics and the loop.

Modules: ``losses`` (SFT, DPO, SimPO, KTO on the shared log-prob kernel; sums and counts),
``optimizer`` (AdamW/Adam/SGD, schedules, clipping), ``step`` (sharded train state and the jitted
step with gradient accumulation), ``data`` (resumable batch stream), ``checkpoint`` (Orbax),
``metrics`` (JSONL/TensorBoard, MFU), ``config`` (every key and its check), ``loop`` (`train`),
``record`` (the workdir's config.json, fingerprint and DONE.json), ``compiled`` (jitted functions
reused across `train` calls in one process), ``signals`` (`StopOnSignal`, for launchers),
``reference`` (the precomputed reference log-probs of DPO/KTO).
Mesh and sharding rules live in `elasticity.sharding`.
"""
