"""Filling a built model: one loader per source, peers of one shape, each `load(chunks, source, ...)`.

A model is made one way: `minibridge.parallel.parallelize.build_model` (single-device stages on meta ->
parallelize -> allocate this rank's blocks), then exactly one of

    initialize_fresh(chunks, seed)          fresh.py        pretraining from scratch
    load_hf_folder(chunks, folder)          hf.py           an HF folder (check_hf_folder first, on meta)
    load_checkpoint(chunks, folder)         checkpoints.py  a minibridge (DCP) checkpoint's model weights
    load_megatron(chunks, folder)           checkpoints.py  a Megatron-Core torch_dist checkpoint

Each fills every base parameter of this rank's chunks in any layout (TP blocks, pipeline stages, FSDP2 dp
shards through `parallel.fsdp.local_rows`) and leaves LoRA/DoRA adapters attached on meta to
`minibridge.peft.init_adapters`. The trainer, `AutoBridge.to_model`, conversion, evaluation and generation
all make their models this way. Nothing is imported here: checkpoints.py brings in
torch.distributed.checkpoint (~50 MB resident), which loading an HF folder never needs.
"""
