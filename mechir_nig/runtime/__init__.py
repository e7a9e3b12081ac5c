"""Runtime support: torch.distributed launches (``distributed``) and sharded checkpoints (``shards``).

``mechir_nig.runtime.distributed`` detects a ``torchrun`` launch, initialises the process group (gloo on
CPU, nccl on CUDA) and maps work over the ranks (``Context.map``: agree, shard by cost, run under a
collective, gather in input order); ``mechir_nig.runtime.shards`` keeps per-rank checkpoints and their
manifest. Without a launch every helper is the single-process identity (rank 0 of 1, no process group).
"""
