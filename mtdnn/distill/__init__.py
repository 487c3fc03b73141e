"""Knowledge distillation: an ensemble of trained runs (teachers) -> soft targets -> a smaller student.

  targets.py    soft targets: computed per example, stored versioned on disk, checked for staleness
  distiller.py  the Distiller the training loop uses (the loss), its checks, and the student-vs-teachers table
  student.py    a shallower student cut from a teacher (DistilBERT's every k-th layer)
  transfer.py   the transfer set: unlabelled texts and noisy copies of train rows, labelled by the teachers
  __main__.py   `python -m mtdnn.distill` (the entry point)

`python -m mtdnn.distill distill.teachers=[RUN_A,RUN_B] encoder=... task=[...]` is `python -m mtdnn.train`
with `distill=ensemble`. Per training example the teachers' outputs are averaged; what a target is belongs to
the head kind (`soft_target`/`kd_term` in mtdnn/kinds/<kind>.py): e.g. mean of softmax(logits / T) over labels
(classification) or a group's candidates (ranking), mean of the values (regression), per-token
distributions (span, tagging: their teachers must share the student's tokenizer, checked), per-label sigmoids
(multilabel); and the student learns alpha * hard-label loss + (1 - alpha) * the kind's KD term (T^2 *
KL(teacher || softmax(student / T)) for distributions, MSE to the teachers for regression).

Soft targets are computed once with each teacher's own tokenizer and head (so teachers may tokenise
differently from the student: targets are per example) and stored as
`<soft_targets_dir>/<task>-<key>.safetensors`:

  tensors   targets (rows x width, float32; ranking rows padded with 0) and sizes (candidates per group)
  metadata  format "mtdnn-soft-targets/1", task, head (the kind), temperature, rows, data (fingerprint of the
            train split), teachers (JSON: run dir, checkpoint, sha256 of its weights)

A file whose teachers' weights or data no longer match is stale: it is rebuilt (distill.rebuild_stale=true)
or refused with a message naming it. `distill.soft_targets=on_the_fly` instead runs the teachers on every
training batch (they must then share the student's tokenizer).

May import: core, kinds, data, model, runs, evaluation, serving (teachers are loaded run folders).
"""

from __future__ import annotations

from mtdnn.distill.distiller import Distiller, distill_problems
from mtdnn.distill.student import shallow_student
from mtdnn.distill.transfer import add_transfer_rows

__all__ = ["Distiller", "add_transfer_rows", "distill_problems", "shallow_student"]
