"""Process groups, device selection and the CPU adapter for megatron-core.

This room owns initialising torch.distributed and megatron's model-parallel state (TP/PP/DP, CP plumbed
through) from torchrun's environment, choosing the device at run time (NCCL on GPU, gloo on CPU), and the
one module (cpu_adapter) that redirects megatron-core's CUDA-only calls when no GPU is present."""
