"""What a ZO step measures: the loss of a batch, and the evaluation metric.

One objective per way a model answers:
- `MaskedLM`: prompt with one mask, cross-entropy over the label words' logits
  at the mask (LM-BFF / MeZO's RoBERTa setting).
- `CausalLM`: candidates scored by their mean log-likelihood; trained either as
  classification (cross-entropy over the candidates' scores, MeZO's
  `--train_as_classification`, its OPT setting for classification tasks) or with the
  next-token loss on the gold answer (`train_loss=lm`, MeZO's choice for ReCoRD,
  COPA, SQuAD, DROP); generation tasks (zo.generation) decode greedily and score token F1 / EM.
- `Classifier`: a sequence-classification head (encoders without an MLM head).
- `Synthetic`: the quadratic, whose forward already is the loss.

Language-model heads are applied only where a prediction is read (the mask, the
answer tokens), not over the whole sequence: with 50K-word vocabularies that is
most of the forward's cost otherwise.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data.base import MASK, Example, Task
from zo import ZOError


def batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def cut_left(ids: list[int], room: int) -> list[int]:
    """At most `room` tokens of a prompt: its first (a BOS, where the tokenizer adds one) and its last."""
    if len(ids) <= room:
        return ids
    return ids[:1] + ids[len(ids) - room + 1 :] if room > 1 else ids[-1:]


def _pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


class Objective:
    metric = "accuracy"
    predictions: list[dict] | None = None  # generation: each answer of the evaluations since cleared

    def loss(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, model: nn.Module, batch: list[Example], copies: int) -> torch.Tensor:
        """`loss` of each of `copies` copies of the batch, from one forward over the batch repeated
        along dim 0 (copy j is rows [j·n, (j+1)·n)): what optimizer.batched_probes evaluates, each
        copy's rows at its own probe's weights (zo.batched)."""
        raise ZOError(
            f"the {type(self).__name__} objective has no batch to repeat per probe: "
            "set optimizer.batched_probes=false"
        )

    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int) -> dict[str, float]:
        raise NotImplementedError


class _Tokenized(Objective):
    def __init__(self, task: Task, tokenizer, max_length: int) -> None:
        self.task = task
        self.tok = tokenizer
        self.max_length = max_length

    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def word_ids(self, words: list[str]) -> list[int]:
        """One token id per label word; a multi-token word is scored by its first token (warned once)."""
        ids = []
        for word in words:
            pieces = self.encode(word, special=False)
            if len(pieces) != 1:
                warnings.warn(
                    f"label word {word!r} is {len(pieces)} tokens for this tokenizer; scoring its first",
                    stacklevel=2,
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise ZOError(f"label words {words} share a first token for this tokenizer; pick other words")
        return ids

    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int) -> dict[str, float]:
        correct, total_loss = 0, 0.0
        with torch.inference_mode():
            for batch in batches(examples, batch_size):
                scores = self.scores(model, batch)  # [B, C] log-probabilities
                labels = torch.tensor([ex.label for ex in batch], device=scores.device)
                correct += int((scores.argmax(-1) == labels).sum())
                total_loss += float(F.cross_entropy(scores, labels, reduction="sum"))
        return {"accuracy": correct / len(examples), "eval_loss": total_loss / len(examples)}

    def scores(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, model: nn.Module, batch: list[Example], copies: int) -> torch.Tensor:
        """Per copy, the cross-entropy of its scores (what `loss` is for these objectives)."""
        labels = torch.tensor([ex.label for ex in batch] * copies, device=_device(model))
        each = F.nll_loss(self.scores(model, batch * copies), labels, reduction="none")
        return each.view(copies, len(batch)).mean(1)


def hidden_states(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The transformer body's last hidden states: the heads then run only where a score needs them.

    A peft model runs its underlying transformers model's body (LoRA layers sit inside it); prefix
    tuning also passes its virtual tokens' keys and values and widens the mask, as peft's forward does.
    `position_ids` (default: the model's own, counted from the first column) serve left-padded decoding.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    extra = {}
    if hasattr(model, "peft_config") and model.active_peft_config.is_prompt_learning:
        # transformers 5 names the argument `cache` (`past_key_values` before, deprecated since)
        named = inspect.signature(inner.base_model.forward).parameters
        key = "cache" if "cache" in named else "past_key_values"
        extra[key] = model.get_prompt(batch_size=ids.shape[0])
        tokens = model.active_peft_config.num_virtual_tokens
        mask = torch.cat([mask.new_ones(ids.shape[0], tokens), mask], 1)
    if position_ids is not None:
        extra["position_ids"] = position_ids
    return inner.base_model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state


def mlm_head(model: nn.Module) -> nn.Module:
    for attr in ("lm_head", "cls", "generator_lm_head"):
        if hasattr(model, attr):
            return getattr(model, attr)
    raise ZOError(f"{type(model).__name__} has no masked-LM head; use model.kind=cls for this model")


class MaskedLM(_Tokenized):
    def __init__(self, task: Task, tokenizer, max_length: int) -> None:
        super().__init__(task, tokenizer, max_length)
        if tokenizer.mask_token is None:
            raise ZOError("this tokenizer has no mask token; masked-LM prompts need model.kind=mlm models")
        self.label_ids = self.word_ids(task.label_words)

    def _prompt_ids(self, ex: Example) -> tuple[list[int], int]:
        ids = self.encode(self.task.mlm_prompt(ex).replace(MASK, self.tok.mask_token))
        pos = ids.index(self.tok.mask_token_id)
        if len(ids) > self.max_length:  # drop text, never the mask or the special tokens at the ends
            keep = self.max_length - 2
            start = min(max(1, pos - keep // 2), len(ids) - 1 - keep)
            ids = ids[:1] + ids[start : start + keep] + ids[-1:]
            pos = ids.index(self.tok.mask_token_id)
        return ids, pos

    def scores(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        encoded = [self._prompt_ids(ex) for ex in batch]
        ids, mask = _pad([e[0] for e in encoded], self.tok.pad_token_id, _device(model))
        hidden = hidden_states(model, ids, mask)
        at_mask = hidden[torch.arange(len(batch)), torch.tensor([e[1] for e in encoded])]
        logits = mlm_head(model)(at_mask).float()[:, self.label_ids]
        return logits.log_softmax(-1)

    def loss(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        labels = torch.tensor([ex.label for ex in batch], device=_device(model))
        return F.nll_loss(self.scores(model, batch), labels)


class CausalLM(_Tokenized):
    """Causal LM scoring continuations (classification, per-example candidates); generation tasks
    subclass it (zo.generation.Generation)."""

    def __init__(self, task: Task, tokenizer, max_length: int, train_loss: str = "auto") -> None:
        super().__init__(task, tokenizer, max_length)
        self.train_loss = default_train_loss(task) if train_loss == "auto" else train_loss

    def context_ids(self, ex: Example) -> list[int]:
        """The prompt's token ids (whole: `_sequences` cuts them to fit)."""
        return self.encode(self.task.causal_prompt(ex))

    def _sequences(self, pairs: list[tuple[list[int], str]]) -> tuple[list[list[int]], list[int]]:
        """Token ids of context+continuation, and where the continuation starts (context cut on the left)."""
        seqs, starts = [], []
        for ctx, continuation in pairs:
            cont = self.encode(continuation, special=False)
            ctx = cut_left(ctx, max(self.max_length - len(cont), 1))
            seqs.append(ctx + cont)
            starts.append(len(ctx))
        return seqs, starts

    def continuation_logprobs(
        self, model: nn.Module, pairs: list[tuple[list[int], str]]
    ) -> list[torch.Tensor]:
        """Per pair, the log-probability of each continuation token given everything before it."""
        seqs, starts = self._sequences(pairs)
        ids, mask = _pad(seqs, self.tok.pad_token_id, _device(model))
        hidden = hidden_states(model, ids, mask)
        rows, cols = [], []
        for row, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            rows += [row] * (len(seq) - start)
            cols += list(range(start - 1, len(seq) - 1))  # position t predicts token t + 1
        logits = model.get_output_embeddings()(hidden[rows, cols]).float()
        targets = ids[rows, [c + 1 for c in cols]]
        token_lp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        sizes = [len(seq) - start for seq, start in zip(seqs, starts, strict=True)]
        return list(token_lp.split(sizes))

    def _gold(self, ex: Example) -> str:
        return self.task.causal_candidates(ex)[ex.label]

    def _gold_pairs(self, batch: list[Example]) -> list[tuple[list[int], str]]:
        """(prompt ids, gold answer) per example: what the next-token loss scores."""
        return [(self.context_ids(ex), self._gold(ex)) for ex in batch]

    def loss(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        if self.train_loss == "classification":  # what evaluation measures: the candidates' cross-entropy
            labels = torch.tensor([ex.label for ex in batch], device=_device(model))
            return F.nll_loss(self.scores(model, batch), labels)
        return -torch.cat(self.continuation_logprobs(model, self._gold_pairs(batch))).mean()

    def losses(self, model: nn.Module, batch: list[Example], copies: int) -> torch.Tensor:
        if self.train_loss == "classification":
            return super().losses(model, batch, copies)
        lps, n = self.continuation_logprobs(model, self._gold_pairs(batch) * copies), len(batch)
        return torch.stack([-torch.cat(lps[j * n : (j + 1) * n]).mean() for j in range(copies)])

    def scores(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        candidates = [self.task.causal_candidates(ex) for ex in batch]
        single = [[self.encode(c, special=False) for c in cands] for cands in candidates]
        if all(len(ids) == 1 for cands in single for ids in cands) and len({len(c) for c in single}) == 1:
            return self._next_token_scores(model, batch, [[ids[0] for ids in cands] for cands in single])
        return self._sequence_scores(model, batch)

    def _next_token_scores(
        self, model: nn.Module, batch: list[Example], ids: list[list[int]]
    ) -> torch.Tensor:
        """Single-token candidates: one forward over the contexts, read the next-token distribution.

        Same numbers as scoring each context+candidate sequence, at 1/C of the cost.
        """
        seqs, _ = self._sequences([(self.context_ids(ex), "") for ex in batch])
        tokens, mask = _pad(seqs, self.tok.pad_token_id, _device(model))
        hidden = hidden_states(model, tokens, mask)
        last = hidden[torch.arange(len(batch)), torch.tensor([len(s) - 1 for s in seqs])]
        logprobs = model.get_output_embeddings()(last).float().log_softmax(-1)
        return logprobs.gather(-1, torch.tensor(ids, device=logprobs.device)).log_softmax(-1)

    def _sequence_scores(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        pairs, owners = [], []
        for i, ex in enumerate(batch):
            context = self.context_ids(ex)
            for cand in self.task.causal_candidates(ex):
                pairs.append((context, cand))
                owners.append(i)
        means = torch.stack([lp.mean() for lp in self.continuation_logprobs(model, pairs)])
        width = max(owners.count(i) for i in range(len(batch)))
        out = torch.full((len(batch), width), -math.inf, device=means.device)
        for i in range(len(batch)):
            picked = means[[k for k, o in enumerate(owners) if o == i]]
            out[i, : len(picked)] = picked
        return out.log_softmax(-1)


class Classifier(_Tokenized):
    def scores(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        texts = [self.task.text(ex) for ex in batch]
        pairs = isinstance(texts[0], tuple)
        enc = self.tok(
            [t[0] for t in texts] if pairs else texts,
            [t[1] for t in texts] if pairs else None,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(_device(model))
        return model(**enc).logits.float().log_softmax(-1)

    def loss(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        labels = torch.tensor([ex.label for ex in batch], device=_device(model))
        return F.nll_loss(self.scores(model, batch), labels)


class Synthetic(Objective):
    """The quadratic: no data, the forward is f(x), and the metric is f(x) itself (lower is better)."""

    metric = "loss"

    def loss(self, model: nn.Module, batch: list[Example]) -> torch.Tensor:
        return model()

    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int) -> dict[str, float]:
        with torch.inference_mode():
            return {"loss": float(model())}


def default_train_loss(task: Task) -> str:
    """MeZO's rule: classification tasks train as classification; per-example candidates (ReCoRD,
    COPA) and generation train on the gold answer's tokens."""
    return "classification" if task.task_type == "classify" else "lm"


def build_objective(task: Task, kind: str, tokenizer, max_length: int, train_loss: str = "auto") -> Objective:
    if task.task_type == "synthetic" or kind == "quadratic":
        if not (task.task_type == "synthetic" and kind == "quadratic"):
            raise ZOError("task=quadratic and model=quadratic go together; set both or neither")
        return Synthetic()
    if task.task_type == "generate" and kind != "causal":
        raise ZOError(f"task {task.name} generates answers and needs a causal LM (model.kind=causal)")
    if train_loss == "lm" and kind != "causal":
        raise ZOError("task.train_loss=lm trains a causal LM on its answer tokens: use model.kind=causal")
    if kind == "mlm":
        return MaskedLM(task, tokenizer, max_length)
    objective = _objective(task, kind, tokenizer, max_length, train_loss)
    if task.select_on != "auto":  # task=custom's task.select_on (zo.config checks it fits the task)
        objective.metric = task.select_on
    return objective


def _objective(task: Task, kind: str, tokenizer, max_length: int, train_loss: str) -> Objective:
    if kind == "causal" and task.task_type == "generate":
        from zo.generation import Generation

        return Generation(task, tokenizer, max_length, train_loss)
    if kind == "causal":
        return CausalLM(task, tokenizer, max_length, train_loss)
    if task.task_type == "multiple_choice":
        raise ZOError(f"task {task.name} has per-example candidates; use a causal LM (model.kind=causal)")
    return Classifier(task, tokenizer, max_length)
