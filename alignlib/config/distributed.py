"""The `distributed:` section: data-parallel training on Ray workers (DDP or FSDP2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignlib.config.section import Section


class DistributedConfig(Section):
    num_workers: int = Field(0, ge=0)
    """Data-parallel training processes, each a Ray actor holding one rank of a private
    torch.distributed group (gloo on CPU, NCCL with `use_gpu`); 0 trains in this process. Every
    rank prepares the whole mini-batch and trains its share of the micro-batches, so the
    gradient equals one process's exactly; the checkpoint resumes on any number of workers."""
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """`ddp`: every rank holds the whole model; gradients are all-reduced once per optimizer
    step. `fsdp2`: parameters, gradients and optimizer state sharded over the ranks with
    `torch.distributed.fsdp.fully_shard` (one unit per decoder layer), for models that do not
    fit one device: full fine-tuning or LoRA, offline or online with Ray rollout workers
    (`rollout.num_workers` > 0, full weights gathered for them each step), a KL reference
    sharded the same way; not INPO, an engine sharing the policy or an offline run's in-loop
    eval (use ddp)."""
    use_gpu: bool = False
    """One GPU per worker (Ray `num_gpus=1`; the model goes on that worker's GPU)."""
    num_cpus_per_worker: float = Field(1.0, gt=0)
    """Ray CPU reservation of each worker (also its torch thread count, at least 1)."""
    placement: Literal["split", "colocate"] = "split"
    """Where the Ray rollout workers (`rollout.num_workers`) go, reserved with the training
    workers in one Ray placement group: `split` gives each its own reservation (its own GPU with
    `rollout.worker_num_gpus: 1`); `colocate` puts rollout worker j in training worker j mod N's
    reservation, on its node and GPU (each rollout worker takes `rollout.worker_num_gpus` of it,
    e.g. 0.3 — lower vLLM's `gpu_memory_utilization` to match — and the training worker the
    rest)."""
    ray_address: str | None = None
    """Ray cluster to join (`auto` for the one `ray start` made on this node); null starts a
    local one. Multi-node: `ray start --head` on one node, `ray start --address HEAD:6379` on
    the others, then `alignlib train cfg.yaml distributed.ray_address=auto`; output_dir must be
    on storage every node sees."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest wait for a worker to start, and for any collective: a dead or stuck worker ends
    the run with one line naming it instead of a hang."""
