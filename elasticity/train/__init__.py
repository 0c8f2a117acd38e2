"""Training: objectives, optimizers, the jitted step, checkpoints, metrics and the loop.

Modules: ``losses`` (SFT, DPO, SimPO, KTO on the shared log-prob kernel; sums and counts),
``optimizer`` (AdamW/Adam/SGD, schedules, clipping), ``step`` (sharded train state and the jitted
step with gradient accumulation), ``data`` (resumable batch stream), ``checkpoint`` (Orbax),
``metrics`` (JSONL/TensorBoard, MFU), ``config`` (every key and its check), ``loop`` (`train`).
Mesh and sharding rules live in `elasticity.sharding`.
"""
