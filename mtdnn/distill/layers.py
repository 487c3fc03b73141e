"""Layer-wise distillation: what the student's intermediate layers learn from the teachers', on the
student's own batches (the teachers share its tokenizer, checked).

  hidden     TinyBERT (Jiao et al. 2020, eq. 8) and DistilBERT's cosine loss: for each mapped pair of
             hidden states (student index s -> teacher index t, 0 = the embeddings' output),
             MSE(H_s W, H_t) or 1 - cos(H_s W, H_t) per real token, averaged over tokens and pairs; W is
             one learned projection shared by the pairs, there only where the widths differ.
  attention  MiniLM (Wang et al. 2020, eq. 4) with MiniLMv2's relation heads: the last layer's queries and
             keys are cut into r heads, A = softmax(Q K^T / sqrt(d_r)), and the term is KL(A_t || A_s) per
             head and real query token (padded keys masked). Student and teacher may differ in width and in
             their own head count: only r must divide both widths.
  values     MiniLM's value relation: the same with softmax(V V^T / sqrt(d_r)).

With several teachers, their states and relation distributions are averaged (`layers_from: mean`), or one
teacher's are used (`layers_from: <index>`). The queries, keys and values are read by forward hooks on the
last layer's projections, so the attention implementation (eager or sdpa) does not matter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtdnn.core.errors import MtdnnError

# (query, key, value) projection names by model family: BERT/RoBERTa/ELECTRA, DeBERTa-v2, DistilBERT, and the
# q_proj family (ModernBERT-style and most decoders)
PROJECTION_NAMES = (
    ("query", "key", "value"),
    ("query_proj", "key_proj", "value_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q_proj", "k_proj", "v_proj"),
)
LAYER_INDEX = re.compile(r"\blayers?\.(\d+)\.")


def last_layer_projections(encoder: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The last transformer layer's query, key and value projections (modules whose outputs are Q, K, V)."""
    modules = dict(encoder.named_modules())
    for names in PROJECTION_NAMES:
        queries = [n for n in modules if n.rsplit(".", 1)[-1] == names[0] and LAYER_INDEX.search(n)]
        if queries:
            last = max(queries, key=lambda n: int(LAYER_INDEX.findall(n)[-1]))
            prefix = last.rsplit(".", 1)[0]
            if all(f"{prefix}.{name}" in modules for name in names):
                return tuple(modules[f"{prefix}.{name}"] for name in names)
    looked = ", ".join("/".join(names) for names in PROJECTION_NAMES)
    raise MtdnnError(
        f"distill.attention_weight/value_weight: cannot find the last layer's query, key and value "
        f"projections in {type(encoder).__name__} (looked for {looked})"
    )


@contextmanager
def watching(encoder: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the last layer's Q, K and V of the latest forward pass, as {"q", "k", "v"}."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out))
        for name, module in zip("qkv", last_layer_projections(encoder))
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def relation_log_probs(a: torch.Tensor, b: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(a_h b_h^T / sqrt(d_h)) over b's real tokens, per relation head h: (batch, heads, L, L)."""
    batch, length, width = a.shape
    size = width // heads
    a = a.float().view(batch, length, heads, size).transpose(1, 2)
    b = b.float().view(batch, length, heads, size).transpose(1, 2)
    scores = a @ b.transpose(-1, -2) / math.sqrt(size)
    # a large negative, not -inf: a padded key then has probability 0 and a finite log, so 0 * log stays 0
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def relation_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of relation distributions (probabilities, log-probabilities), mean over heads
    and real query tokens."""
    per_row = (teacher * (teacher.clamp_min(1e-30).log() - student)).sum(-1)  # (batch, heads, L)
    weights = mask.float()[:, None, :].expand_as(per_row)
    return (per_row * weights).sum() / weights.sum()


def hidden_distance(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, loss: str
) -> torch.Tensor:
    """Mean over real tokens of the squared error per hidden unit (mse) or of 1 - cosine (cosine)."""
    if loss == "mse":
        per_token = (student.float() - teacher.float()).pow(2).mean(-1)
    else:
        per_token = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    weights = mask.float()
    return (per_token * weights).sum() / weights.sum()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """TinyBERT's uniform strategy over hidden-state indices: student i -> teacher round(i * T / S), for
    i = 0 (embeddings) .. S."""
    return [(i, round(i * teacher_layers / student_layers)) for i in range(student_layers + 1)]


@dataclass
class TeacherLayers:
    """What the chosen teachers' encoders give on one batch: hidden states (averaged over teachers) and
    relation distributions (probabilities, averaged)."""

    hidden: list[torch.Tensor] | None
    attention: torch.Tensor | None
    values: torch.Tensor | None


class LayerTerms:
    """The three weighted terms, with the learned projection (a module: its weights train and resume with
    the run)."""

    def __init__(self, cfg, student_config, teacher_configs: list, device: torch.device):
        self.cfg = cfg
        self.weights = {
            "hidden": cfg.hidden_weight,
            "attention": cfg.attention_weight,
            "values": cfg.value_weight,
        }
        teacher = teacher_configs[0]
        self.layer_map = (
            [tuple(pair) for pair in cfg.layer_map]
            if cfg.layer_map
            else uniform_layer_map(student_config.num_hidden_layers, teacher.num_hidden_layers)
        )
        self.heads = cfg.relation_heads or student_config.num_attention_heads
        self.projection = None
        if cfg.hidden_weight > 0 and student_config.hidden_size != teacher.hidden_size:
            with torch.random.fork_rng(devices=[]):  # its draw must not shift the student's random stream
                torch.manual_seed(0)
                self.projection = nn.Linear(student_config.hidden_size, teacher.hidden_size).to(device)

    @property
    def relations(self) -> bool:
        return self.weights["attention"] > 0 or self.weights["values"] > 0

    def parameters(self) -> list[nn.Parameter]:
        return list(self.projection.parameters()) if self.projection is not None else []

    def state_dict(self) -> dict:
        return self.projection.state_dict() if self.projection is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.projection is not None and state:
            self.projection.load_state_dict(state)

    @torch.no_grad()
    def of_teachers(self, runs: list, task: str, batch: dict) -> TeacherLayers:
        """Every chosen teacher's encoder on the batch (eval mode), averaged."""
        hidden, attention, values = [], [], []
        mask = batch["attention_mask"]
        for run in runs:
            run.model.eval()
            with watching(run.model.encoder) if self.relations else _nothing() as seen:
                out = run.model.encode(
                    task, batch["input_ids"], mask, batch.get("token_type_ids"), hidden_states=True
                )
            # only what a weighted term reads: this runs on every training batch
            if self.weights["hidden"]:
                hidden.append([h.float() for h in out.hidden_states])
            if self.weights["attention"]:
                attention.append(relation_log_probs(seen["q"], seen["k"], self.heads, mask).exp())
            if self.weights["values"]:
                values.append(relation_log_probs(seen["v"], seen["v"], self.heads, mask).exp())
        mean = lambda xs: torch.stack(xs).mean(0)  # noqa: E731
        return TeacherLayers(
            [mean([h[i] for h in hidden]) for i in range(len(hidden[0]))] if self.weights["hidden"] else None,
            mean(attention) if self.weights["attention"] else None,
            mean(values) if self.weights["values"] else None,
        )

    def terms(
        self,
        teacher: TeacherLayers,
        student_hidden: tuple[torch.Tensor, ...],
        seen: dict[str, torch.Tensor],
        mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms for the student's clean pass (its hidden states and last layer's Q, K, V)."""
        terms = {}
        if teacher.hidden is not None:
            project = self.projection or (lambda h: h)
            distances = [
                hidden_distance(project(student_hidden[s]), teacher.hidden[t], mask, self.cfg.hidden_loss)
                for s, t in self.layer_map
            ]
            terms["distill_hidden"] = self.weights["hidden"] * torch.stack(distances).mean()
        if teacher.attention is not None:
            student = relation_log_probs(seen["q"], seen["k"], self.heads, mask)
            kl = relation_kl(teacher.attention, student, mask)
            terms["distill_attention"] = self.weights["attention"] * kl
        if teacher.values is not None:
            student = relation_log_probs(seen["v"], seen["v"], self.heads, mask)
            terms["distill_values"] = self.weights["values"] * relation_kl(teacher.values, student, mask)
        return terms


@contextmanager
def _nothing() -> Iterator[dict]:
    yield {}


def layer_problems(cfg, student_config, teacher_configs: list, teachers: list[str]) -> list[str]:
    """Problems of the layer terms' settings against the student's and the teachers' encoders."""
    problems = []
    widths = {c.hidden_size for c in teacher_configs}
    depths = {c.num_hidden_layers for c in teacher_configs}
    if cfg.layers_from == "mean" and (len(widths) > 1 or len(depths) > 1):
        problems.append(
            "distill.layers_from: mean averages the teachers' layers, but their encoders differ "
            f"(widths {sorted(widths)}, layers {sorted(depths)}); choose one teacher: layers_from=0"
        )
    student, teacher = student_config.num_hidden_layers, teacher_configs[0].num_hidden_layers
    for i, pair in enumerate(cfg.layer_map or []):
        if len(pair) != 2:
            problems.append(f"distill.layer_map[{i}]: must be [student, teacher], got {list(pair)}")
        elif not (0 <= pair[0] <= student and 0 <= pair[1] <= teacher):
            problems.append(
                f"distill.layer_map[{i}]: {list(pair)} is outside the student's 0..{student} or the "
                f"teacher's 0..{teacher} hidden states (0 = embeddings)"
            )
    if cfg.attention_weight > 0 or cfg.value_weight > 0:
        heads = cfg.relation_heads or student_config.num_attention_heads
        for who, config in [("student", student_config), *zip(teachers, teacher_configs)]:
            if config.hidden_size % heads:
                problems.append(
                    f"distill.relation_heads: {heads} does not divide the {who}'s width {config.hidden_size}"
                )
    return problems
