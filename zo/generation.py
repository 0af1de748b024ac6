"""The objective of generation tasks (SQuAD, DROP, task=custom with answers): the model writes the answer.

Training: the next-token loss on the answer's tokens, the prompt as context (MeZO's setting for
SQuAD/DROP). Evaluation: greedy decoding of up to `task.max_new_tokens` tokens; the first line of
the output, stripped, is the prediction, scored against every gold answer by exact match (`em`)
and token F1 (`f1`) with SQuAD's normalisation (data.metrics); `eval_loss` is the answer tokens'
mean loss, per example then over examples (so that shards of an evaluation combine exactly). Each
answer is kept in `predictions` for the run's predictions.jsonl.

A prompt that is a conversation (`Example.meta["messages"]`: TRL's messages files, template.chat)
is rendered by the tokenizer's chat template with its generation prompt, and the target is what
the template writes for the assistant turn (its end-of-turn token included), as TRL does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from data.base import Example, Task
from data.metrics import exact_match, f1_score
from zo import ZOError
from zo.objective import CausalLM, _device, batches, cut_left, hidden_states


def answer_of(text: str) -> str:
    """The prediction in a decoded continuation: its first line, stripped."""
    return text.split("\n")[0].strip()


class Generation(CausalLM):
    metric = "f1"

    def __init__(self, task: Task, tokenizer, max_length: int, train_loss: str = "auto") -> None:
        if train_loss == "classification":
            raise ZOError(f"task {task.name} generates answers: it trains with task.train_loss=lm")
        if task.chat and not getattr(tokenizer, "chat_template", None):
            raise ZOError(
                f"task {task.name} asks for a chat template (a messages file, or task.template.chat=true) "
                "and this model's tokenizer has none: use an instruct model's (e.g. model=smollm2), or plain "
                "prompts (task.template.chat=false, prompt-completion files)"
            )
        super().__init__(task, tokenizer, max_length, "lm")
        self.max_new_tokens = task.max_new_tokens
        self.predictions: list[dict] = []

    # ---- prompts and targets ------------------------------------------------------------------------
    def render(self, messages: list[dict], answer: str | None = None) -> str:
        if answer is None:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        turns = [*messages, {"role": "assistant", "content": answer}]
        return self.tok.apply_chat_template(turns, tokenize=False)

    def context_ids(self, ex: Example) -> list[int]:
        messages = ex.meta.get("messages")
        if messages is None:
            return super().context_ids(ex)
        return self.encode(self.render(messages), special=False)  # the template writes its own BOS

    def _gold(self, ex: Example) -> str:
        messages = ex.meta.get("messages")
        answer = ex.meta.get("target", " " + ex.answers[0])
        if messages is None:
            return answer
        prompt, whole = self.render(messages), self.render(messages, answer.strip())
        return whole[len(prompt) :] if whole.startswith(prompt) else answer.strip()

    def too_long(self, examples: list[Example]) -> list[int]:
        """The token counts of prompt + target over task.max_length (those prompts are cut on the left)."""
        sizes = [
            len(self.context_ids(ex)) + len(self.encode(self._gold(ex), special=False)) for ex in examples
        ]
        return [n for n in sizes if n > self.max_length]

    # ---- evaluation -----------------------------------------------------------------------------------
    def generate(self, model: nn.Module, contexts: list[list[int]]) -> list[str]:
        """Greedy continuations of the (left-padded) contexts, decoded without special tokens."""
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, ctx in enumerate(contexts):
            ids[row, width - len(ctx) :] = torch.tensor(ctx)
            mask[row, width - len(ctx) :] = 1
        device = _device(model)
        ids, mask = ids.to(device), mask.to(device)
        if hasattr(model, "peft_config") and model.active_peft_config.is_prompt_learning:
            out = self.greedy_without_cache(model, ids, mask)
        else:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                 do_sample=False, pad_token_id=self.tok.pad_token_id)  # fmt: skip
        return self.tok.batch_decode(out[:, width:], skip_special_tokens=True)

    def greedy_without_cache(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Greedy decoding through the objective's own forward (hidden_states), one whole forward per
        new token. Why: prefix tuning's virtual tokens travel as the KV cache, and with transformers 5
        peft's `generate` hands them over as `past_key_values` while generate passes its own `cache`,
        which wins: the prefix is silently ignored and the base model answers (peft issue 2123's
        family). Positions count real tokens from the first one after the prefix, as in training."""
        prefix = model.active_peft_config.num_virtual_tokens
        stop = model.generation_config.eos_token_id
        stop = torch.tensor(stop if isinstance(stop, list) else [stop if stop is not None else -1])
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        head = model.get_output_embeddings()
        for _ in range(self.max_new_tokens):
            positions = (mask.cumsum(1) - 1).clamp(min=0) + prefix
            nxt = head(hidden_states(model, ids, mask, positions)[:, -1]).argmax(-1)
            nxt = torch.where(done, self.tok.pad_token_id, nxt)
            ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, (~done).long()[:, None]], 1)
            done |= torch.isin(nxt, stop.to(nxt.device))
            if bool(done.all()):
                break
        return ids

    def evaluate(self, model: nn.Module, examples: list[Example], batch_size: int) -> dict[str, float]:
        total = {"f1": 0.0, "em": 0.0, "eval_loss": 0.0}
        with torch.inference_mode():
            for batch in batches(examples, batch_size):
                contexts = [self.context_ids(ex) for ex in batch]
                texts = self.generate(model, [cut_left(c, self.max_length) for c in contexts])
                pairs = [(c, self._gold(ex)) for c, ex in zip(contexts, batch, strict=True)]
                losses = [-float(lp.mean()) for lp in self.continuation_logprobs(model, pairs)]
                for ex, text, loss in zip(batch, texts, losses, strict=True):
                    answer = answer_of(text)
                    scores = {"f1": f1_score(answer, ex.answers), "em": exact_match(answer, ex.answers),
                              "eval_loss": loss}  # fmt: skip
                    total = {k: v + scores[k] for k, v in total.items()}
                    self.predictions.append(self.record(ex, text, answer) | scores)
        return {k: v / len(examples) for k, v in total.items()}

    def record(self, ex: Example, text: str, answer: str) -> dict:
        """One line of predictions.jsonl: what the model was given and what it answered."""
        messages = ex.meta.get("messages")
        prompt = self.task.causal_prompt(ex) if messages is None else self.render(messages)
        return {"line": ex.meta.get("line"), "prompt": prompt, "messages": messages, "output": text,
                "prediction": answer, "answers": ex.answers}  # fmt: skip


def preflight(
    task: Task, examples: list[Example], kind: str, tokenizer, max_length: int, train_loss: str
) -> None:
    """Before the model loads: the objective can be built (a causal LM; a chat template where one is
    asked), and prompts longer than task.max_length are counted in a warning (they are cut on the left)."""
    from zo.objective import build_objective

    objective = build_objective(task, kind, tokenizer, max_length, train_loss)
    if not isinstance(objective, Generation):
        return
    long = objective.too_long(examples)
    if long:
        print(
            f"warning: {len(long)} of {len(examples)} {task.name} examples are longer than task.max_length="
            f"{max_length} tokens (prompt and answer; the longest {max(long)}): their prompts are cut from "
            "the left; raise task.max_length to keep them whole",
            file=sys.stderr,
        )


def write_predictions(out_dir: Path, predictions: list[dict]) -> Path:
    """predictions.jsonl: the final evaluation's test answers, one JSON object a line, in test order."""
    path = out_dir / "predictions.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    os.replace(tmp, path)
    return path
