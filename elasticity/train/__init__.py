"""Training: objectives, optimizers, the jitted step, checkpoints, metrics and the loop.

Modules: ``losses`` (SFT, DPO, SimPO, KTO on the shared log-prob kernel; sums and counts),
``optimizer`` (AdamW/Adam/SGD, schedules, clipping), ``step`` (sharded train state and the jitted
step with gradient accumulation), ``data`` (resumable batch stream), ``checkpoint`` (Orbax),
``metrics`` (JSONL/TensorBoard, MFU, the step log), ``config`` (every key and its check), ``loop``
(`train` and the step loop), ``init`` (processes and mesh, data, model loading, init or restore),
``record`` (the workdir's config.json, fingerprint, DONE.json and metrics trimming), ``export``
(gathering to the host, HF export and snapshots), ``compiled`` (jitted functions reused across
`train` calls in one process), ``signals`` (`StopOnSignal`, for launchers), ``reference`` (the
DPO/KTO reference: its model, or its log-probs precomputed once).
Mesh and sharding rules live in `elasticity.sharding`.
"""
