"""The training loop: `pretrain(config)` / `finetune(config)` run a ConfigContainer to the end.

One optimizer step per global batch. Its micro-batches (this dp rank's share) each contribute
sum-of-token-losses / (tokens in the whole global batch, over every dp rank), so gradients summed
over micro-batches and dp ranks are exactly those of the mean loss over the global batch, whatever
the split: TP=2 or DP=2 runs reproduce a single-process run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..bridge import export_hf_adapter, export_hf_folder
from ..parallel import finalize_grads, initialize
from ..parallel.dims import from_rank0
from ..parallel.data import finalize_pipeline_grads
from ..parallel.fsdp import unshard
from ..parallel.overlap import arm_chunk, grad_reducers
from ..bridge.fingerprint import weights_fingerprint
from ..peft import count_parameters, init_adapters, merge_peft
from ..errors import ConfigError, MinibridgeError
from .config import ConfigContainer
from .data import DataError, DataIterator, HFSource, build_datasets, check_data, load_tokenizer
from .forward import ModelForward
from .model import build_trained_model, hf_source
from .flops import mfu, model_flops_per_token, peak_flops
from .progress import NonFiniteLossError, TrainingLogger, check_finite, memory_gb
from .optimizer import MixedPrecisionAdamW
from .resume import changed_sample_request, check_same_adapters, check_same_run, resume_point
from .scheduler import schedules_of
from .stopping import StopWatch


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step run in this call
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    hf_export: Path | None = None
    hf_adapter_export: Path | None = None  # PEFT runs: the adapters in HF PEFT format
    stopped_by: str | None = None  # a planned or preempted stop before train_iters (training.stopping)


class Trainer:
    def __init__(self, config: ConfigContainer):
        config.validate()
        self.config = config
        self.dims = initialize(config.model.parallel_config())
        self.save_dir = Path(config.checkpoint.save) if config.checkpoint.save else None
        self.lock = self._lock_save_dir()  # before anything is read from or written to the folder
        try:
            self.load_from = self._resume_point()  # a wrong checkpoint.load stops here, before any work
            self._set_up()
        except BaseException:
            self.close()
            raise

    def _set_up(self) -> None:
        c = self.config
        m = c.model
        check_data(c.dataset, self.dims.rank)  # mock data said first; a dataset that cannot be had stops here
        self.dtype = torch.bfloat16 if c.mixed_precision.startswith("bf16") else torch.float32
        if m.deterministic_mode:  # bit-exact reruns; cuBLAS needs a fixed workspace for that (torch docs)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.hf_source = hf_source(c)  # the HF folder the model comes from (exports copy its config), or None
        self.chunks = build_trained_model(c, self.dims, self.dtype)  # minibridge.loading: build, then load
        self.base_model = None  # PEFT: fingerprint of the frozen base the adapters belong to
        if c.peft is not None:
            self._init_adapters(c.checkpoint.pretrained_checkpoint)
        self.optimizer = MixedPrecisionAdamW(
            self.chunks, lr=c.optimizer.lr, weight_decay=c.optimizer.weight_decay,
            betas=(c.optimizer.adam_beta1, c.optimizer.adam_beta2), eps=c.optimizer.adam_eps,
            dims=self.dims, distributed=c.optimizer.use_distributed_optimizer, precision=c.optimizer.state_precision())
        self.reducers = grad_reducers(self.chunks, self.dims, average=False, bucket_bytes=c.ddp.bucket_bytes(),
                                      overlap=c.ddp.overlap_grad_reduce and not c.dist.use_torch_fsdp2)
        # (after the optimizer: see parallel.overlap; FSDP2 overlaps its own reduce-scatters)
        self.schedule, self.weight_decay = schedules_of(c)
        self.train_data, self.valid_data = self._build_data()
        d = c.dataset
        self._data_source = (f"dataset {', '.join(d.data_paths)}" if d.data_paths else f"{d.kind} data") + (
            f" (tokenizer {d.tokenizer or c.checkpoint.pretrained_checkpoint})" if d.kind != "mock" else "")
        self.forward = ModelForward(self.chunks, self.dims, self._data_source)  # train, validate and eval share it
        self.iterator = self._iterator(self.train_data)
        self.step = 0
        self.saved_step = None  # the step of the newest checkpoint of this run, known alike on every rank
        self.skipped_steps = 0  # steps whose gradient norm was not finite (no update), over the whole run
        self._resume()
        log_dir = c.logger.log_dir or c.checkpoint.save
        self.logger = TrainingLogger(
            log_dir, total_iters=c.train.train_iters, log_interval=c.logger.log_interval,
            tensorboard_dir=c.logger.tensorboard_dir, wandb_project=c.logger.wandb_project,
            wandb_exp_name=c.logger.wandb_exp_name, wandb_entity=c.logger.wandb_entity,
            rank=self.dims.rank, config_dict=c.to_dict(), start_step=self.step,
        )
        self.flops_per_token = model_flops_per_token(self.chunks[0].config, m.seq_length)
        self.peak = peak_flops(self.dims.device, self.dtype)

    # ------------------------------------------------------------------ setup
    def _lock_save_dir(self) -> ckpt.RunLock | None:
        """Rank 0 locks checkpoint.save for this run; a refusal reaches every rank."""
        if self.save_dir is None:
            return None
        lock = _checked(ckpt.RunLock(self.save_dir).acquire) if self.dims.rank == 0 else None
        refusal = from_rank0(lock if isinstance(lock, MinibridgeError) else None)
        if refusal is not None:
            raise refusal
        return lock

    @property
    def model(self):
        """This rank's model as `AutoBridge.to_model` returns it (the chunk, or the list of virtual stages)."""
        return self.chunks.public()

    def close(self) -> None:
        """Release checkpoint.save for other runs (`run` does it when it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _init_adapters(self, source):
        """The adapters' values on the frozen pretrained model (identically under every layout)."""
        p = self.config.peft
        init_adapters(self.chunks)
        self.base_model = from_rank0(weights_fingerprint(source) if self.dims.rank == 0 else None)
        trainable, total = count_parameters(self.chunks)
        if self.dims.rank == 0:
            layers = len(self.chunks.adapters.modules)
            print(f"{p.scheme}: rank {p.dim}, alpha {p.alpha:g} on {layers} linear layers; trainable parameters "
                  f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)", flush=True)

    def _peft_info(self) -> dict | None:
        p = self.config.peft
        if p is None:
            return None
        return {"scheme": p.scheme, "dim": p.dim, "modules": self.chunks.adapters.modules,
                "base_model": self.base_model}

    def _build_data(self):
        c = self.config
        d = c.dataset
        # the folder every HF export of the run carries as its tokenizer (None: mock tokens, none to carry)
        self.tokenizer_path = d.tokenizer or (c.checkpoint.pretrained_checkpoint if d.kind != "mock" else None)
        tokenizer = load_tokenizer(self.tokenizer_path) if self.tokenizer_path else None
        num_train, num_valid = c.train.num_samples()
        return build_datasets(
            d.kind, seq_length=c.model.seq_length, tokenizer=tokenizer, data_paths=d.data_paths or None,
            blend_weights=d.blend_weights, split=d.split, seed=c.train.seed, packing=d.packing,
            sample_layout=d.sample_layout, num_train_samples=num_train, num_valid_samples=num_valid,
            vocab_size=self.chunks[0].config.vocab_size, hf_source=HFSource.from_config(d),
            cache_dir=d.cache_dir or (os.path.join(c.checkpoint.save, "data_cache") if c.checkpoint.save else None),
        )

    def _iterator(self, dataset) -> DataIterator:
        t = self.config.train
        return DataIterator(dataset, global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                            dp_rank=self.dims.dp_rank, dp_size=self.dims.dp, seed=t.seed)

    def _resume_point(self) -> str | None:
        """resume.resume_point, decided by rank 0 for every rank (so all take the same branch)."""
        found = from_rank0(_checked(resume_point, self.config.checkpoint, self.save_dir) if self.dims.rank == 0
                           else None)
        if isinstance(found, MinibridgeError):
            raise found
        return None if found is None else str(found)

    def _resume(self):
        """Continue from the checkpoint `_resume_point` found (nothing to do for a fresh run)."""
        folder = self.load_from
        if folder is None:
            return
        stored = ckpt.read_run_info(folder)
        check_same_adapters(folder, stored.get("peft"), self._peft_info())
        check_same_run(folder, stored.get("config"), self.config)
        info = ckpt.load_checkpoint(folder, self.chunks, self.optimizer, trainable_only=self.config.peft is not None)
        self.step = self.saved_step = info["iteration"]
        self.skipped_steps = int(info.get("skipped_steps", 0))
        resized = changed_sample_request(stored.get("config"), self.config)
        self.iterator.load_state_dict(info["data"], resized=resized)
        if self.dims.rank == 0:
            print(f"resumed from {folder} at step {self.step}", flush=True)
            if resized and info["data"].get("dataset_length") != len(self.train_data):
                print(f"the training data was rebuilt for {resized}: {len(self.train_data)} samples instead of "
                      f"{info['data'].get('dataset_length')}, so the samples after step {self.step} come in "
                      f"another order than the stored run's would have (Megatron rebuilds them alike)", flush=True)

    # ------------------------------------------------------------------ steps
    def train_step(self) -> dict:
        start = time.perf_counter()
        micro_batches = self.iterator.next_global_batch()
        f = self.forward
        tokens = f.global_sum(torch.tensor(float(sum(b.num_loss_tokens() for b in micro_batches))))
        if tokens.item() == 0:  # a step of zeros would train nothing, log loss 0 and look fine
            raise DataError(f"step {self.step + 1}: the global batch of {self.config.train.global_batch_size} samples "
                            f"from {self._data_source} holds no loss token (every label masked); check the data's "
                            f"loss masks, or drop such rows")
        loss_sum = torch.zeros((), dtype=torch.float64)  # token-summed NLL of this rank's share
        updates = self.step - self.skipped_steps  # a skipped step does not advance the schedules (Megatron)
        lr = self.schedule(updates)
        self.optimizer.set_lr(lr)
        self.optimizer.set_weight_decay(self.weight_decay(updates))
        normalize = f.loss_normalizer(self.config.model.calculate_per_token_loss, tokens, len(micro_batches))
        if f.pipeline is not None:
            loss_sum += f.pipeline.run(f.micro_batches(micro_batches), normalize,
                                       before_last_backward=partial(arm_chunk, self.reducers))
        else:
            for i, batch in enumerate(micro_batches):
                if i == len(micro_batches) - 1:  # its gradients are final: ddp.overlap_grad_reduce may start
                    arm_chunk(self.reducers, 0)
                micro = f.micro_batch(batch)
                summed = f.loss(micro, "sum")
                normalize(micro, summed).backward()
                loss_sum += summed.detach().double().cpu()
        for v, chunk in enumerate(self.chunks):
            finalize_grads(chunk, self.dims, average_dp=False, reducer=self.reducers[v],
                           bucket_bytes=self.config.ddp.bucket_bytes())
        finalize_pipeline_grads(self.chunks, self.dims)
        loss = (f.sequence_sum(loss_sum) / tokens.clamp(min=1)).item()  # logged: per token, in both modes
        if not math.isfinite(loss):
            check_finite(loss, self.step + 1, self._last_checkpoint())
        grad_norm = self.optimizer.step(self.config.optimizer.clip_grad or None)  # no update when not finite
        self.optimizer.zero_grad()
        self.step += 1
        if not math.isfinite(grad_norm):
            self._skip_step(grad_norm)
        elapsed = time.perf_counter() - start
        t = self.config.train
        tokens_per_sec = t.global_batch_size * self.config.model.seq_length / elapsed
        return dict(loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_sec=tokens_per_sec, step_time=elapsed,
                    skipped_steps=self.skipped_steps,
                    mfu=mfu(tokens_per_sec, self.flops_per_token, self.peak, num_devices=self.dims.world_size),
                    mem_gb=memory_gb(self.dims.device))

    def _skip_step(self, grad_norm: float) -> None:
        """Megatron's rule: a NaN/Inf gradient norm stops the run, unless train.max_skipped_steps allows
        that many steps to be skipped (their update dropped) over the run."""
        self.skipped_steps += 1
        allowed = self.config.train.max_skipped_steps
        if self.skipped_steps > allowed:
            raise NonFiniteLossError(grad_norm, self.step, self._last_checkpoint(), what="gradient norm",
                                     hint=f"{self.skipped_steps} such step(s) so far; train.max_skipped_steps=N "
                                          f"skips up to N of them (no update) instead of stopping, now {allowed}")
        if self.dims.rank == 0:
            print(f"step {self.step}: gradient norm is {grad_norm}; update skipped ({self.skipped_steps} of "
                  f"train.max_skipped_steps={allowed})", flush=True)

    def validate(self) -> float | None:
        """Token-weighted mean NLL over train.eval_iters global batches of the validation split
        (ModelForward.evaluate, as `python -m minibridge.eval` computes it)."""
        if self.valid_data is None:
            return None
        return self.forward.evaluate(self._iterator(self.valid_data), self.config.train.eval_iters).loss

    def _last_checkpoint(self) -> Path | None:
        """The newest checkpoint of checkpoint.save whose stored bytes match their checksums (for the message
        of a stop: it reads those checkpoints whole, so only on the way out)."""
        return ckpt.last_intact_checkpoint(self.save_dir) if self.save_dir is not None else None

    def save(self) -> Path:
        info = {"config": self.config.to_dict(), "data": self.iterator.state_dict(),
                "world_size": self.dims.world_size, "tp": self.dims.tp, "dp": self.dims.dp,
                "skipped_steps": self.skipped_steps}
        if self.config.peft is not None:  # adapters (and their optimizer state) only
            info["peft"] = self._peft_info()
        folder = ckpt.save_checkpoint(self.save_dir, self.step, self.chunks, self.optimizer, info,
                                      keep_last=self.config.checkpoint.keep_last,
                                      trainable_only=self.config.peft is not None)
        self.saved_step = self.step
        return folder

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        c, result = self.config, TrainResult()
        stops = StopWatch(c.train)
        try:
            while self.step < c.train.train_iters:
                metrics = self.train_step()
                result.losses.append(metrics["loss"])
                self.logger.log_step(self.step, metrics)
                if c.train.eval_interval and self.step % c.train.eval_interval == 0:
                    val = self.validate()
                    if val is not None:
                        result.val_losses.append((self.step, val))
                        self.logger.log_validation(self.step, val)
                if self.save_dir and c.checkpoint.save_interval and self.step % c.checkpoint.save_interval == 0:
                    result.last_checkpoint = self.save()
                result.stopped_by = stops.reason(self.step)
                if result.stopped_by is not None and self.step < c.train.train_iters:
                    break
                result.stopped_by = None
            if self.save_dir and self.step > 0 and self.saved_step != self.step:  # the final state
                result.last_checkpoint = self.save()
            if result.stopped_by is not None:
                self._say_stopped(result)
            else:
                result.hf_export, result.hf_adapter_export = self._export_hf()
        except BaseException:
            _quietly(self.logger.finish)  # a second failure there (the same full disk) must not hide this one
            raise
        else:
            self.logger.finish()
        finally:
            stops.close()
            self.close()
        return result

    def _say_stopped(self, result: TrainResult) -> None:
        if self.dims.rank != 0:
            return
        where = (f"saved the checkpoint of step {self.step} to {result.last_checkpoint}; rerun the same command "
                 f"to resume there" if self.save_dir else "checkpoint.save is not set, so nothing was saved")
        print(f"stopped after step {self.step} of {self.config.train.train_iters} ({result.stopped_by}): {where}",
              flush=True)

    def _export_hf(self) -> tuple[Path | None, Path | None]:
        """The final model as an HF folder; a PEFT run also writes its adapters in HF PEFT format to
        `<folder>_adapter`, then merges them (fp32) into the weights it exports."""
        target = self.config.checkpoint.export_hf_on_finish
        if not target:
            return None, None
        if target is True:
            if self.save_dir is None:
                raise ConfigError("checkpoint.export_hf_on_finish=true needs checkpoint.save (or give a folder)")
            target = self.save_dir / "hf"
        unshard(self.chunks)  # FSDP2: whole parameters (the run is over); nothing to do otherwise
        adapter = None
        if self.config.peft is not None:
            adapter = Path(f"{target}_adapter")
            export_hf_adapter(self.chunks, adapter, self.hf_source, overwrite=True)
            merge_peft(self.chunks)  # the run is over: fold the adapters in for the full export
        out = export_hf_folder(self.chunks, target, self.hf_source, overwrite=True, progress=self.dims.rank == 0,
                               tokenizer=self.tokenizer_path)
        if self.dims.rank == 0:
            where = f" (adapters merged; the adapters alone in HF PEFT format in {adapter})" if adapter else ""
            print(f"exported the final model in Hugging Face format to {out}{where}", flush=True)
        return Path(out), adapter


def pretrain(config: ConfigContainer) -> TrainResult:
    return Trainer(config).run()


def finetune(config: ConfigContainer) -> TrainResult:
    if not config.checkpoint.pretrained_checkpoint:
        raise ConfigError("finetune needs checkpoint.pretrained_checkpoint (an HF folder or a minibridge checkpoint)")
    return Trainer(config).run()


def _checked(check, *args):
    """`check(*args)`, or the MinibridgeError it raised (as a value, to hand to every rank)."""
    try:
        return check(*args)
    except MinibridgeError as err:
        return err


def _quietly(action) -> None:
    """`action()`, its failure printed as a warning instead of raised (while another error propagates)."""
    try:
        action()
    except Exception as err:  # noqa: BLE001
        print(f"warning: also failed while closing the run's logs: {err}", file=sys.stderr, flush=True)
